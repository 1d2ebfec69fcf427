"""One run per workdir: the lock refuses a second run, and a dead run's lock is taken over."""
import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

from mixsiam_jax.workdir import locking, run_files

REPO = pathlib.Path(__file__).resolve().parents[1]
HOLD = """
import sys, time
from mixsiam_jax.workdir import locking
with locking.lock_workdir(sys.argv[1]):
  print("locked", flush=True)
  time.sleep(120)
"""


def lock_owner(workdir):
  """The owner recorded in the workdir's lock file, read as the next run reads it."""
  return json.loads((workdir / locking.LOCK_FILE).read_text())


def python(code, *args, **kw):
  return subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def test_a_second_run_is_refused_at_once_and_the_first_keeps_its_lock(tmp_path):
  workdir = tmp_path / "run"
  first = python(HOLD, str(workdir))
  try:
    assert first.stdout.readline().strip() == "locked", first.stderr.read()
    start = time.time()
    second = python(HOLD, str(workdir))
    _, err = second.communicate(timeout=60)
    assert second.returncode != 0
    assert time.time() - start < 30
    assert str(workdir / ".lock") in err and f"pid {first.pid}" in err, err
    assert "WorkdirError: this workdir is in use by another run" in err
    assert first.poll() is None  # undisturbed
    assert lock_owner(workdir)["pid"] == first.pid
  finally:
    first.kill()
    first.wait()


def test_a_dead_runs_lock_is_taken_over_with_a_log_line(tmp_path, caplog):
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True)
  dead_pid = int(dead.stdout)  # exited: its pid is no longer running
  tmp_path.joinpath(".lock").write_text(json.dumps(
      {"pid": dead_pid, "host": os.uname().nodename, "started": "earlier"}))
  with caplog.at_level("WARNING"):
    with locking.lock_workdir(str(tmp_path)) as path:
      assert path == str(tmp_path)
      assert lock_owner(tmp_path)["pid"] == os.getpid()
  assert f"pid {dead_pid}" in caplog.text and "no longer running" in caplog.text
  assert not (tmp_path / ".lock").exists()


def test_a_refused_run_leaves_no_trace_and_a_nested_lock_is_a_no_op(tmp_path):
  new = tmp_path / "new" / "run"
  with locking.lock_workdir(str(new)):
    assert (new / ".lock").exists()
    with locking.lock_workdir(str(new)):  # the same process: nested use
      pass
    assert (new / ".lock").exists()
  assert os.listdir(tmp_path) == []  # created here and left empty: removed again
  with locking.lock_workdir(str(new)):
    (new / "config.json").write_text("{}")
  assert sorted(os.listdir(new)) == ["config.json"]


def test_an_unusable_workdir_is_refused(tmp_path):
  (tmp_path / "a_file").write_text("x")
  with pytest.raises(run_files.WorkdirError, match="a_file is a file"):
    with locking.lock_workdir(str(tmp_path / "a_file")):
      pass


def test_a_too_long_workdir_ends_in_one_line_and_leaves_nothing(tmp_path):
  long_path = tmp_path / "/".join(["d" * 200] * 30)  # 6,000 characters, as reported
  with pytest.raises(run_files.WorkdirError, match="is too long for the file system"):
    with locking.lock_workdir(str(long_path)):
      pass
  assert list(tmp_path.iterdir()) == []
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": ""}
  result = subprocess.run([sys.executable, "main.py", "--config=configs/cifar10.py:tiny",
                           f"--workdir={long_path}"], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=env)
  assert result.returncode != 0
  assert "Traceback" not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: --workdir=") and "is too long for the file system" in last, last
  assert len(last) < 500
  assert list(tmp_path.iterdir()) == []


def test_a_lock_that_cannot_be_removed_is_left_stale_with_a_warning(tmp_path, caplog,
                                                                    monkeypatch):
  workdir = tmp_path / "run"
  real_unlink = os.unlink

  def read_only(path, *args, **kwargs):
    if str(path).endswith(".lock"):
      raise OSError(30, "Read-only file system", str(path))
    return real_unlink(path, *args, **kwargs)

  with locking.lock_workdir(str(workdir)):
    monkeypatch.setattr(os, "unlink", read_only)
  monkeypatch.setattr(os, "unlink", real_unlink)
  assert "Could not remove" in caplog.text and "Read-only file system" in caplog.text
  # Left behind, naming this process: the next run (here, of this process) takes it over.
  with locking.lock_workdir(str(workdir)):
    pass
  assert not (workdir / ".lock").exists()
