"""Training with data.resize_on_device (the device crops, resizes and flips) end to end on CPU.

The tiny config on the 200-JPEG CIFAR folder through main.py: a run killed with
SIGKILL and rerun reproduces the straight run's every logged number, as the
host-resize path does. The recipes' default since CIFAR measured 1.5x on the host
too, so tests/test_reliability.py and the TFDS mock-data run of tests/test_pretrain.py
train on it as well; the flags here pin it (and a canvas larger than the images).
"""
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from mixsiam_jax.workdir import metrics_file

REPO = pathlib.Path(__file__).resolve().parents[1]
FLAGS = ("--config=configs/cifar10.py:tiny", "--config.eval_dataset=",
         "--config.data.resize_on_device=true", "--config.data.canvas_size=40",
         "--config.num_train_steps=9", "--config.log_every_steps=1",
         "--config.checkpoint_every_steps=3", "--config.async_checkpointing=false")


def _start(workdir, folder):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8 "
             "--xla_backend_optimization_level=0", TF_CPP_MIN_LOG_LEVEL="2",
             JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
  log = open(f"{workdir}.log", "a")  # pylint: disable=consider-using-with
  return subprocess.Popen([sys.executable, "main.py", *FLAGS, f"--workdir={workdir}",
                           f"--config.dataset=folder:{folder}"], cwd=REPO, stdout=log,
                          stderr=subprocess.STDOUT, env=env)


LOSS_KEYS = ("loss", "loss_siam", "loss_mix", "z_std", "grad_norm", "param_norm", "lr",
             "online_probe_loss")


def _curves(workdir):
  return {row["step"]: {k: row[k] for k in LOSS_KEYS}
          for row in metrics_file.read_metrics(str(workdir)) if "loss" in row}


@pytest.mark.slow
def test_a_device_resize_run_killed_and_rerun_reproduces_the_straight_run(cifar_jpeg_folder,
                                                                          tmp_path):
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  runs = [_start(straight, cifar_jpeg_folder), _start(killed, cifar_jpeg_folder)]
  deadline = time.time() + 300
  while not (killed / "checkpoints" / "3").is_dir():
    assert runs[1].poll() is None and time.time() < deadline, (
        pathlib.Path(f"{killed}.log").read_text()[-3000:])
    time.sleep(0.02)
  runs[1].send_signal(signal.SIGKILL)
  assert runs[1].wait() == -signal.SIGKILL
  assert not (killed / "checkpoints" / "9").exists()  # killed mid-run
  assert runs[0].wait(timeout=300) == 0, pathlib.Path(f"{straight}.log").read_text()[-3000:]
  rerun = _start(killed, cifar_jpeg_folder)
  assert rerun.wait(timeout=300) == 0, pathlib.Path(f"{killed}.log").read_text()[-3000:]
  want = _curves(straight)
  assert sorted(want) == list(range(1, 10))
  assert _curves(killed) == want  # bit for bit
