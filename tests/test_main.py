"""main.py as users run it: mistakes end in one line, one run per workdir, resuming on purpose."""
import contextlib
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from mixsiam_jax.options.programs import from_config
from mixsiam_jax.workdir import locking, metrics_file, run_files
from tests.helpers import snapshot

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = ("--config=configs/cifar10.py:tiny", "--config.eval_dataset=")


def run_main(*args, timeout=300):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": "",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"}
  return subprocess.run([sys.executable, "main.py", *args], cwd=REPO, capture_output=True,
                        text=True, timeout=timeout, env=env)


# Printed by TensorFlow's C++ logging on some CPUs (with oneDNN notices) before absl starts.
ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called"


def errors_of(result):
  """stderr without log lines (absl's and C++'s start with a level letter and a date)."""
  return [line for line in result.stderr.splitlines()
          if line.strip() and not (line[:1] in "IWEF" and line[1:5].isdigit())
          and not line.startswith(ABSL_PREAMBLE)]


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
      [sys.executable, "-c", "import sys, time\nfrom mixsiam_jax.workdir import locking\n"
       "with locking.lock_workdir(sys.argv[1]):\n  print('locked', flush=True)\n"
       "  time.sleep(300)\n", str(workdir)], cwd=REPO, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    start = time.time()
    result = run_main(*TINY, f"--workdir={workdir}", "--config.dataset=folder:/nonexistent")
    assert result.returncode != 0
    assert time.time() - start < 120  # imports only: nothing is read or built
    owner = json.loads((workdir / locking.LOCK_FILE).read_text())
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
    pretrain.train_and_evaluate(from_config(config), str(run))
  config.allow_length_change = True
  pretrain.train_and_evaluate(from_config(config), str(run))
  rows = [r["step"] for r in metrics_file.read_metrics(str(run)) if "loss" in r]
  assert rows[-2:] == [8, 9]
  assert "9" in os.listdir(run / "checkpoints")
  assert run_files.read_config(str(run))["num_train_steps"] == 9


@pytest.mark.slow
def test_a_flipped_byte_in_an_array_of_the_newest_checkpoint_is_refused_in_one_line(
    tiny_pretrained, cifar_jpeg_folder, tmp_path):
  from mixsiam_jax import sharding  # pylint: disable=g-import-not-at-top
  from mixsiam_jax.checkpoints import reader  # pylint: disable=g-import-not-at-top
  from tests.test_checkpoints_storage import (  # pylint: disable=g-import-not-at-top
      flip_a_byte_in_the_largest_array_file, restores_silently_with_other_values)
  broken = tmp_path / "broken"
  shutil.copytree(tiny_pretrained, broken)
  mesh = sharding.create_mesh()
  items = ("step", "params", "batch_stats", "opt_state", "rng")
  read = lambda workdir: reader.restore_replicated(str(workdir), mesh, items=items)[0]
  intact = read(tiny_pretrained)
  # A byte of array data: without the checksums, the run would train on from other values.
  flip_a_byte_in_the_largest_array_file(
      broken / "checkpoints" / "6",
      lambda: restores_silently_with_other_values(lambda: read(broken), intact))
  before = snapshot(broken)
  result = run_main(*TINY, f"--config.dataset=folder:{cifar_jpeg_folder}", f"--workdir={broken}",
                    "--config.num_train_steps=9", "--config.allow_length_change=true")
  assert result.returncode == 1, result.stderr[-3000:]
  lines = errors_of(result)
  assert len(lines) == 1, result.stderr[-3000:]
  where = re.escape(str(broken))
  assert re.fullmatch(
      rf"error: checkpoint {where}/checkpoints/6 is corrupt \(array \S+ does not match the "
      r"checksum recorded when it was saved: CRC-32 [0-9a-f]{8}, saved [0-9a-f]{8}\); step 3 is "
      rf"intact: move the broken step away \(mv {where}/checkpoints/6 {where}/broken_checkpoint_6"
      r"\) and rerun the same command to use step 3\.", lines[0]), lines[0]
  assert snapshot(broken) == before


# ---------------------------------------------------------------------------
# Every way out ends the process promptly, with its exit status (cli.py) and one line.
# ---------------------------------------------------------------------------
LONG = ("--config.num_train_steps=2000", "--config.log_every_steps=1",
        "--config.checkpoint_every_steps=3")


def start_main(workdir, data, *args):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": "",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"}
  return subprocess.Popen(
      [sys.executable, "main.py", *TINY, f"--config.dataset=folder:{data}",
       f"--workdir={workdir}", *args], cwd=REPO, stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE, text=True, env=env)


def wait_for_step(workdir, step, proc, timeout=240):
  """Waits until metrics.jsonl has logged ``step`` (log_every_steps=1)."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    rows = [r for r in metrics_file.read_metrics(str(workdir)) if "loss" in r]
    if rows and rows[-1]["step"] >= step:
      return
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    time.sleep(0.05)
  proc.kill()
  raise AssertionError(f"step {step} never logged")


def ended_within(proc, seconds):
  """(exit status, stderr lines that are not log lines); fails if the process outlives ``seconds``."""
  try:
    _, stderr = proc.communicate(timeout=seconds)
  except subprocess.TimeoutExpired:
    proc.kill()
    raise AssertionError(f"still running {seconds} s after its cause: "
                         f"{proc.communicate()[1][-3000:]}") from None
  result = subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr)
  return proc.returncode, errors_of(result)


def checkpoint_steps(workdir):
  return sorted(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit())


def copy_folder(source, target):
  shutil.copytree(source, target)
  return target


@pytest.mark.slow
def test_divergence_ends_with_status_3_and_one_line(cifar_jpeg_folder, tmp_path):
  result = run_main(*TINY, f"--config.dataset=folder:{cifar_jpeg_folder}",
                    f"--workdir={tmp_path / 'run'}", "--config.num_train_steps=20",
                    "--config.optim.base_lr=1e12", timeout=120)
  assert result.returncode == 3, result.stderr[-3000:]
  lines = errors_of(result)
  assert len(lines) == 1 and lines[0].startswith("error: non-finite "), result.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("signum,status,meaning", [
    (signal.SIGINT, 130, "interrupted (Ctrl-C)"), (signal.SIGTERM, 75, "preempted (SIGTERM)")])
def test_a_signal_during_the_first_compile_ends_the_run_within_2_s_in_one_line(
    cifar_jpeg_folder, tmp_path, signum, status, meaning):
  workdir = tmp_path / "run"
  proc = start_main(workdir, cifar_jpeg_folder, *LONG)
  seen = []
  for line in proc.stderr:  # until the loop says it compiles the step
    seen.append(line)
    if "Compiling the training step" in line:
      break
  assert proc.poll() is None, "".join(seen)[-3000:]
  proc.send_signal(signum)
  got, lines = ended_within(proc, 2)
  assert got == status, lines
  assert lines == [f"{meaning} before the first step finished: nothing was trained, so nothing "
                   "is saved; rerun the same command to start again."]
  assert checkpoint_steps(workdir) == []


@pytest.mark.slow
def test_ctrl_c_saves_the_step_and_ends_with_status_130(cifar_jpeg_folder, tmp_path):
  workdir = tmp_path / "run"
  proc = start_main(workdir, cifar_jpeg_folder, *LONG)
  wait_for_step(workdir, 4, proc)
  proc.send_signal(signal.SIGINT)
  status, lines = ended_within(proc, 30)
  assert status == 130, lines
  assert len(lines) == 1, lines
  step = int(re.match(r"interrupted \(Ctrl-C\) at step (\d+), checkpoint saved; rerun the same "
                      r"command to resume\.$", lines[0]).group(1))
  assert step >= 4 and checkpoint_steps(workdir)[-1] == step


@pytest.mark.slow
def test_a_vanished_data_folder_ends_the_run_in_one_line_within_10_s(cifar_jpeg_folder,
                                                                     tmp_path):
  data = copy_folder(cifar_jpeg_folder, tmp_path / "data")
  workdir = tmp_path / "run"
  proc = start_main(workdir, data, *LONG)
  wait_for_step(workdir, 4, proc)
  shutil.rmtree(data)
  status, lines = ended_within(proc, 10)
  assert status == 1 and len(lines) == 1, lines
  assert lines[0].startswith(f"error: --config.dataset=folder:{data} stopped being readable"), lines
  assert f"Image folder '{data}' does not exist" in lines[0]
  assert checkpoint_steps(workdir)[-1] >= 3  # what was saved is intact


@pytest.mark.slow
def test_deleted_classes_stop_the_run_naming_the_change(cifar_jpeg_folder, tmp_path):
  data = copy_folder(cifar_jpeg_folder, tmp_path / "data")
  workdir = tmp_path / "run"
  proc = start_main(workdir, data, *LONG)
  wait_for_step(workdir, 4, proc)
  for name in ("cat", "dog", "frog"):
    shutil.rmtree(data / name)
  status, lines = ended_within(proc, 10)
  assert status == 1 and len(lines) == 1, lines
  assert "changed while the run was reading it: it now holds 140 examples in 7 class(es), " \
         "the run started with 200 in 10 (data.json)" in lines[0], lines


@pytest.mark.slow
def test_files_added_mid_run_are_not_read_and_the_next_resume_refuses_them(
    cifar_jpeg_folder, tmp_path):
  data = copy_folder(cifar_jpeg_folder, tmp_path / "data")
  workdir = tmp_path / "run"
  proc = start_main(workdir, data, "--config.num_train_steps=30", "--config.log_every_steps=1",
                    "--config.checkpoint_every_steps=10")
  wait_for_step(workdir, 4, proc)
  for i in range(5):
    shutil.copy(data / "cat" / "0000.jpg", data / "cat" / f"added_{i}.jpg")
  (data / "newclass").mkdir()
  shutil.copy(data / "dog" / "0000.jpg", data / "newclass" / "0000.jpg")
  status, lines = ended_within(proc, 240)
  assert status == 0 and not lines, lines  # the run reads the listing it started with
  assert checkpoint_steps(workdir)[-1] == 30
  result = run_main(*TINY, f"--config.dataset=folder:{data}", f"--workdir={workdir}",
                    "--config.num_train_steps=40", "--config.log_every_steps=1",
                    "--config.checkpoint_every_steps=10", "--config.allow_length_change=true")
  assert result.returncode == 1, result.stderr[-3000:]
  lines = errors_of(result)
  assert len(lines) == 1 and "differs from the one this run started on" in lines[0], lines


@pytest.mark.slow
def test_a_link_from_the_data_folder_to_itself_adds_no_class_and_no_image(cifar_jpeg_folder,
                                                                         tmp_path):
  data = copy_folder(cifar_jpeg_folder, tmp_path / "data")
  os.symlink(".", data / "loop_top")
  result = run_main(*TINY, f"--config.dataset=folder:{data}", f"--workdir={tmp_path / 'run'}",
                    "--config.num_train_steps=1", timeout=180)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"train data: folder:{data} split 'train': 200 examples, 10 classes" in result.stderr
  assert result.stderr.count("loop_top") == 1, result.stderr[-3000:]  # named once


@contextlib.contextmanager
def small_disk(path, size):
  """A tmpfs of ``size`` (e.g. '3m', '8k') mounted at ``path`` for the block; root only (the
  test is skipped where it cannot be mounted)."""
  path.mkdir()
  if os.geteuid() != 0 or not shutil.which("mount") or subprocess.run(
      ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
      capture_output=True).returncode:
    pytest.skip("needs root to mount a small tmpfs")
  try:
    yield path
  finally:
    subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.slow
def test_a_full_disk_ends_in_one_line_and_the_run_resumes_once_there_is_space(
    cifar_jpeg_folder, tmp_path):
  with small_disk(tmp_path / "disk", "3m") as disk:
    workdir = disk / "run"
    # About 1.4 MiB per checkpoint of the tiny model: the third does not fit in 3 MiB.
    args = ("--config.num_train_steps=8", "--config.checkpoint_every_steps=2")
    result = run_main(*TINY, f"--config.dataset=folder:{cifar_jpeg_folder}",
                      f"--workdir={workdir}", *args, timeout=180)
    assert result.returncode == 4, result.stderr[-3000:]
    lines = errors_of(result)
    assert len(lines) == 1, result.stderr[-3000:]
    assert re.match(rf"error: cannot save checkpoint (\d+) in {workdir}/checkpoints: no space "
                    r"left on device, [\d.]+ \w+ free; ", lines[0]), lines
    intact = checkpoint_steps(workdir)
    assert not [n for n in os.listdir(workdir / "checkpoints") if not n.isdigit()]
    assert subprocess.run(["mount", "-o", "remount,size=64m", str(disk)]).returncode == 0
    result = run_main(*TINY, f"--config.dataset=folder:{cifar_jpeg_folder}",
                      f"--workdir={workdir}", *args, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    if intact:
      assert f"at step {intact[-1]}." in result.stderr  # "Resumed from ... at step N."
    assert checkpoint_steps(workdir)[-1] == 8


def resumes(workdir, data):
  """Starts the run again on ``workdir``; True once it says it resumed (then stopped by SIGTERM)."""
  proc = start_main(workdir, data, *LONG)
  seen = []
  for line in proc.stderr:
    seen.append(line)
    if "Resumed from " in line:
      break
  proc.send_signal(signal.SIGTERM)
  proc.communicate(timeout=120)
  return any("Resumed from " in line for line in seen)


@pytest.mark.slow
def test_a_disk_filled_by_another_program_mid_run_ends_in_one_line_with_status_4(
    cifar_jpeg_folder, tmp_path):
  with small_disk(tmp_path / "disk", "16m") as disk:
    workdir = disk / "run"
    proc = start_main(workdir, cifar_jpeg_folder, *LONG)
    wait_for_step(workdir, 4, proc)
    # Another program fills the disk (dd until it is full).
    subprocess.run(["dd", "if=/dev/zero", f"of={disk / 'filler'}", "bs=64k"], capture_output=True)
    status, lines = ended_within(proc, 60)
    assert status == 4 and len(lines) == 1, lines
    assert re.match(r"error: cannot (save checkpoint \d+ in|write) .*[Nn]o space left on device, "
                    r"[\d.]+ \w+ free; the newest intact checkpoint is step \d+", lines[0]), lines
    os.remove(disk / "filler")
    assert resumes(workdir, cifar_jpeg_folder)


@pytest.mark.slow
def test_a_workdir_made_read_only_mid_run_ends_in_one_line_with_status_4(cifar_jpeg_folder,
                                                                        tmp_path):
  workdir = tmp_path / "run"
  if os.geteuid() != 0 or not shutil.which("mount"):
    pytest.skip("needs root to mount")
  proc = start_main(workdir, cifar_jpeg_folder, *LONG)
  wait_for_step(workdir, 4, proc)
  # A read-only view of the workdir over it: every path opened from now on is read-only (the
  # kernel refuses to remount a file system read-only while files on it are open for writing).
  mounted = subprocess.run(["mount", "--bind", str(workdir), str(workdir)]).returncode == 0
  try:
    if not mounted or subprocess.run(["mount", "-o", "remount,ro,bind", str(workdir)]).returncode:
      proc.kill()
      pytest.skip("this machine cannot bind-mount read-only")
    status, lines = ended_within(proc, 60)
    assert status == 4 and len(lines) == 1, lines
    assert re.match(r"error: cannot (save checkpoint \d+ in|write) .*[Rr]ead-only file system.*"
                    r"the newest intact checkpoint is step \d+", lines[0]), lines
  finally:
    if mounted:
      subprocess.run(["umount", "-l", str(workdir)])
  assert resumes(workdir, cifar_jpeg_folder)


@pytest.mark.slow
def test_a_failing_knn_monitor_keeps_the_checkpoint_of_its_step(cifar_jpeg_folder, tmp_path):
  evaluation = copy_folder(cifar_jpeg_folder, tmp_path / "eval")
  workdir = tmp_path / "run"
  proc = start_main(workdir, cifar_jpeg_folder, *LONG, f"--config.eval_dataset=folder:{evaluation}",
                    "--config.eval_split=[:2]", "--config.eval_every_steps=6")
  wait_for_step(workdir, 2, proc)
  shutil.rmtree(evaluation)
  status, lines = ended_within(proc, 120)
  assert status == 1 and len(lines) == 1, lines
  assert f"Image folder '{evaluation}' does not exist" in lines[0], lines
  assert checkpoint_steps(workdir)[-1] == 6  # saved before the evaluation that failed


def test_an_extra_argument_is_one_line(tmp_path):
  result = run_main(*TINY, f"--workdir={tmp_path / 'w'}", "extra", timeout=60)
  assert result.returncode == 1
  assert errors_of(result) == [
      "error: unexpected argument(s) extra: every option is a flag, e.g. "
      "--config=configs/cifar10.py --workdir=DIR (see --help)."], result.stderr
