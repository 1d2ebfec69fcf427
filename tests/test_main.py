"""main.py as users run it: mistakes end in one line, one run per workdir, resuming on purpose."""
import os
import pathlib
import shutil
import subprocess
import sys
import time

import pytest

from mixsiam_jax import workdir as workdir_lib, workdir_lock

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = ("--config=configs/cifar10.py:tiny", "--config.eval_dataset=")


def run_main(*args, timeout=300):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": "",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"}
  return subprocess.run([sys.executable, "main.py", *args], cwd=REPO, capture_output=True,
                        text=True, timeout=timeout, env=env)


def errors_of(result):
  """stderr without absl's log lines (they start with a level letter and a date)."""
  return [line for line in result.stderr.splitlines()
          if line.strip() and not (line[:1] in "IWEF" and line[1:5].isdigit())]


@pytest.mark.parametrize("override,needles", [
    ("--config.modle.depth=18", ("no field 'modle'", 'Did you mean "model"')),
    ("--config.batchsize=4", ("no field 'batchsize'", 'Did you mean "batch_size"')),
    ("--config.batch_size=abc", ("--config.batch_size=abc", "invalid literal")),
])
def test_config_mistakes_end_in_one_line(tmp_path, override, needles):
  result = run_main(*TINY, f"--workdir={tmp_path / 'w'}", override, timeout=60)
  assert result.returncode != 0
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
  assert all(n in lines[0] for n in needles), lines[0]
  assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_a_busy_workdir_is_refused_in_one_line(tmp_path):
  workdir = tmp_path / "run"
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time\nfrom mixsiam_jax import workdir_lock\n"
       "with workdir_lock.lock_workdir(sys.argv[1]):\n  print('locked', flush=True)\n"
       "  time.sleep(300)\n", str(workdir)], cwd=REPO, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    start = time.time()
    result = run_main(*TINY, f"--workdir={workdir}", "--config.dataset=folder:/nonexistent")
    assert result.returncode != 0
    assert time.time() - start < 120  # imports only: nothing is read or built
    owner = workdir_lock.read_owner(str(workdir / ".lock"))
    assert errors_of(result) == [
        f"error: this workdir is in use by another run (pid {holder.pid} on host "
        f"{owner['host']}, started {owner['started']}; lock file {workdir / '.lock'}): wait for "
        "it to end or stop it, or choose another --workdir. If that run is no longer running, "
        "delete the lock file."], result.stderr[-3000:]
    assert holder.poll() is None
  finally:
    holder.kill()
    holder.wait()


@pytest.mark.slow
def test_a_finished_run_is_extended_on_purpose_and_a_broken_newest_step_is_named(
    tiny_pretrained, cifar_jpeg_folder, tmp_path):
  data = f"--config.dataset=folder:{cifar_jpeg_folder}"
  longer = ("--config.num_train_steps=9", "--config.allow_length_change=true")
  # A broken newest checkpoint: one line naming it, the intact step and the way to it.
  broken = tmp_path / "broken"
  shutil.copytree(tiny_pretrained, broken)
  for path in (broken / "checkpoints" / "6" / "state").rglob("*"):
    if path.is_file() and "ocdbt" in str(path):
      path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  result = run_main(*TINY, data, f"--workdir={broken}", *longer)
  assert result.returncode != 0
  lines = errors_of(result)
  assert len(lines) == 1, result.stderr[-3000:]
  assert lines[0].startswith(f"error: checkpoint {broken}/checkpoints/6 is unreadable")
  assert "step 3 is intact: move the broken step away (mv " in lines[0]

  # Extending without saying so is refused; with allow_length_change it trains on.
  # (In process: the one-line printing of such errors is checked above.)
  from configs import cifar10  # pylint: disable=g-import-not-at-top
  from mixsiam_jax import pretrain  # pylint: disable=g-import-not-at-top
  run = tmp_path / "run"
  shutil.copytree(tiny_pretrained, run)
  config = cifar10.get_config("tiny")
  config.dataset, config.eval_dataset = f"folder:{cifar_jpeg_folder}", ""
  config.async_checkpointing = False
  config.num_train_steps = 9
  with pytest.raises(ValueError, match="--config.allow_length_change=true"):
    pretrain.train_and_evaluate(config, str(run))
  config.allow_length_change = True
  pretrain.train_and_evaluate(config, str(run))
  rows = [r["step"] for r in workdir_lib.read_metrics(str(run)) if "loss" in r]
  assert rows[-2:] == [8, 9]
  assert "9" in os.listdir(run / "checkpoints")
  assert workdir_lib.read_config(str(run))["num_train_steps"] == 9
