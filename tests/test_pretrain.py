"""End-to-end pretraining runs of the tiny config: files, resume, devices, bad input."""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import cifar10
from mixsiam_jax import pretrain, workdir as workdir_lib
from mixsiam_jax.data import tfds_prepare
from mixsiam_jax.program_options import from_config

REPO = pathlib.Path(__file__).resolve().parents[1]
LOSS_KEYS = ("loss", "loss_siam", "loss_mix", "z_std", "grad_norm", "lr")


def tiny_config(dataset):
  config = cifar10.get_config("tiny")
  config.dataset = dataset
  config.eval_dataset = ""
  config.async_checkpointing = False
  return config


def curves(workdir):
  return {row["step"]: {k: row[k] for k in LOSS_KEYS}
          for row in workdir_lib.read_metrics(str(workdir)) if "loss" in row}


@pytest.mark.slow
@pytest.mark.usefixtures("one_block_per_stage")  # the runs compile the step twice each
def test_tiny_run_on_folder_writes_everything_and_resumes_exactly(cifar_jpeg_folder, tmp_path):
  config = tiny_config(f"folder:{cifar_jpeg_folder}")
  config.log_every_steps = 1  # logged values are then single steps, not window means
  workdir = tmp_path / "run"
  pretrain.train_and_evaluate(from_config(config), str(workdir))
  assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(workdir))
  assert json.loads((workdir / "config.json").read_text())["model"]["width"] == 8
  straight = curves(workdir)
  assert sorted(straight) == [1, 2, 3, 4, 5, 6]
  assert all(np.isfinite(v) for row in straight.values() for v in row.values())

  # Preempted after step 3: the rerun resumes there and reproduces the same numbers.
  resumed_dir = tmp_path / "resumed"
  shutil.copytree(workdir, resumed_dir)
  shutil.rmtree(resumed_dir / "checkpoints" / "6")
  pretrain.train_and_evaluate(from_config(config), str(resumed_dir))
  assert sorted(os.listdir(resumed_dir / "checkpoints")) == ["3", "6"]
  assert curves(resumed_dir) == straight

  # A finished run exits at once without touching anything.
  before = (workdir / "metrics.jsonl").read_bytes()
  start = time.time()
  assert pretrain.train_and_evaluate(from_config(config), str(workdir)) == {}
  assert time.time() - start < 30
  assert (workdir / "metrics.jsonl").read_bytes() == before


@pytest.mark.slow
@pytest.mark.usefixtures("one_block_per_stage")
def test_tiny_run_on_mock_tfds_and_device_counts_agree(tmp_path, monkeypatch):
  # Mock data need no download or preparation (tests/test_data_tfds_prepare.py tests that).
  monkeypatch.setattr(tfds_prepare, "prepare_for_run", lambda datasets: None)
  config = tiny_config("tfds:cifar10")
  config.num_train_steps = 4
  with tfds.testing.mock_data(num_examples=64, policy=tfds.testing.MockPolicy.USE_CODE):
    pretrain.train_and_evaluate(from_config(config), str(tmp_path / "eight"))
    pretrain.train_and_evaluate(from_config(config), str(tmp_path / "one"),
                                devices=jax.devices()[:1])
  eight, one = curves(tmp_path / "eight"), curves(tmp_path / "one")
  assert sorted(eight) == [2, 4]
  for step in eight:
    for key in LOSS_KEYS:
      # Same global batch; only the order of cross-device sums differs.
      np.testing.assert_allclose(eight[step][key], one[step][key], rtol=1e-4, atol=1e-5,
                                 err_msg=f"{key} at step {step}")


def run_main(*args, env=None, timeout=120):
  return subprocess.run([sys.executable, "main.py", *args], cwd=REPO, capture_output=True,
                        text=True, timeout=timeout, env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_default_command_offline_fails_fast_naming_both_ways_out(tmp_path):
  # A proxy that refuses every connection stands for a machine without internet.
  proxy = "http://127.0.0.1:9"
  start = time.time()
  result = run_main("--config=configs/cifar10.py", f"--workdir={tmp_path / 'w'}",
                    env={"TFDS_DATA_DIR": str(tmp_path / "no_tfds"), "HTTPS_PROXY": proxy,
                         "https_proxy": proxy})
  assert result.returncode == 1
  assert time.time() - start < 90  # imports dominate; no download retries
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and errors[0] == result.stderr.strip().splitlines()[-1]
  assert errors[0].startswith("error: the download of cifar10 failed")
  assert "TFDS_DATA_DIR" in errors[0] and "--config.dataset=folder:PATH" in errors[0]
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("field,value,needle", [
    ("model.depth", 20, "model.depth=20"),
    ("method.lam", 1.5, "method.lam=1.5"),
    ("method.aggregation", "min", "method.aggregation='min'"),
    ("batch_size", 12, "batch_size=12"),
])
def test_bad_config_values_fail_before_compiling(tmp_path, field, value, needle):
  config = tiny_config("folder:/nonexistent")
  section, _, name = field.rpartition(".")
  (config[section] if section else config)[name] = value
  with pytest.raises(ValueError, match=needle.replace(".", r"\.").replace("(", r"\(")):
    pretrain.train_and_evaluate(from_config(config), str(tmp_path / "w"))


def test_half_precision_refuses_non_booleans():
  # The config field is typed: the command line cannot set it to anything else.
  with pytest.raises(TypeError):
    cifar10.get_config().half_precision = "yes"


def test_pretrained_on_the_pretraining_program_is_refused(tmp_path):
  config = tiny_config("folder:/nonexistent")
  config.pretrained = "/nonexistent"
  with pytest.raises(ValueError, match="pretrained='/nonexistent' is not used by pretraining"):
    pretrain.train_and_evaluate(from_config(config), str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_negative_learning_rate_is_refused(tmp_path):
  config = tiny_config("folder:/nonexistent")
  config.optim.base_lr = -1.0
  with pytest.raises(ValueError, match=r"optim\.base_lr=-1\.0 must be a positive number"):
    pretrain.train_and_evaluate(from_config(config), str(tmp_path / "w"))


@pytest.mark.slow
def test_a_resume_on_a_data_set_other_than_data_json_records_is_refused(
    tiny_pretrained, cifar_jpeg_folder, tmp_path):
  run = tmp_path / "run"
  shutil.copytree(tiny_pretrained, run)
  shutil.rmtree(run / "checkpoints" / "6")  # so that the run resumes at step 3
  described = json.loads((run / pretrain.DATA_FILE).read_text())
  described["train"]["num_examples"] = 190  # as if 10 images had been added since
  (run / pretrain.DATA_FILE).write_text(json.dumps(described))
  config = cifar10.get_config("tiny")
  config.dataset = config.eval_dataset = f"folder:{cifar_jpeg_folder}"
  config.async_checkpointing = False
  with pytest.raises(pretrain.DatasetError, match=r"^the train data set differs from the one "
                     r"this run started on \(data.json: 190 examples in 10 classes .* now 200 in "
                     r"10 "):
    pretrain.train_and_evaluate(from_config(config), str(run))
  assert sorted(os.listdir(run / "checkpoints")) == ["3"]


@pytest.mark.slow
def test_a_tiny_run_says_what_it_does_and_logs_the_lr_of_each_logged_step(cifar_jpeg_folder,
                                                                           tmp_path):
  result = run_main("--config=configs/cifar10.py:tiny", f"--workdir={tmp_path / 'w'}",
                    f"--config.dataset=folder:{cifar_jpeg_folder}", "--config.eval_dataset=")
  assert result.returncode == 0, result.stderr[-3000:]
  err = result.stderr
  compiling, compiled = err.index("Compiling the training step"), err.index("Compiled the")
  first = err.index("step 1/6 (first step done), loss ")
  assert compiling < compiled < first
  summary = err.strip().splitlines()[-1]
  assert "Pretraining finished: steps 1-6 of 6 in " in summary
  assert f"newest checkpoint: {tmp_path / 'w' / 'checkpoints' / '6'}." in summary
  # The tiny recipe: lr 0.03 x 16 / 256, cosine over 6 steps, no warm-up; step s uses the
  # rate at s - 1 steps done.
  rows = [r for r in workdir_lib.read_metrics(str(tmp_path / "w")) if "lr" in r]
  assert [r["step"] for r in rows] == [2, 4, 6]
  for r in rows:
    expected = 0.03 * 16 / 256 * 0.5 * (1 + np.cos(np.pi * (r["step"] - 1) / 6))
    assert r["lr"] == pytest.approx(expected, rel=1e-6)
