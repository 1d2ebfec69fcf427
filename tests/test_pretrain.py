"""End-to-end pretraining runs of the tiny config: files, resume, devices, bad input."""
import json
import logging
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
from mixsiam_jax import pretrain
from mixsiam_jax.data import tfds_prepare
from mixsiam_jax.options.programs import from_config
from mixsiam_jax.workdir import metrics_file, run_files
from tests.helpers import snapshot

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
          for row in metrics_file.read_metrics(str(workdir)) if "loss" in row}


@pytest.mark.slow
@pytest.mark.usefixtures("one_block_per_stage")  # the runs compile the step twice each
def test_tiny_run_on_folder_writes_everything_and_resumes_exactly(cifar_jpeg_folder, tmp_path):
  config = tiny_config(f"folder:{cifar_jpeg_folder}")
  config.data.resize_on_device = False  # the host path here; the default (device) elsewhere
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
  rows = [r for r in metrics_file.read_metrics(str(tmp_path / "w")) if "lr" in r]
  assert [r["step"] for r in rows] == [2, 4, 6]
  for r in rows:
    expected = 0.03 * 16 / 256 * 0.5 * (1 + np.cos(np.pi * (r["step"] - 1) / 6))
    assert r["lr"] == pytest.approx(expected, rel=1e-6)


def _resumable_run(tiny_pretrained, tmp_path):
  """A copy of the tiny_pretrained run that resumes at step 3."""
  run = tmp_path / "run"
  shutil.copytree(tiny_pretrained, run)
  shutil.rmtree(run / "checkpoints" / "6")
  return run


def _repoint_to_a_copy_of_its_data(run, folder, tmp_path):
  """Copies the run's data folder and points config.json and data.json at the copy.

  The fingerprint names files relative to the folder, so it holds for the copy:
  the run is the same run, with its data at another path.
  """
  data = shutil.copytree(folder, tmp_path / "data")
  for name in ("config.json", pretrain.DATA_FILE):
    path = run / name
    path.write_text(path.read_text().replace(f"folder:{folder}", f"folder:{data}"))
  return data


def _fixture_config(folder):
  """The config of the tiny_pretrained run, on ``folder``."""
  config = cifar10.get_config("tiny")
  config.dataset = config.eval_dataset = f"folder:{folder}"
  config.async_checkpointing = False
  return config


@pytest.mark.slow
def test_a_resume_on_files_changed_in_content_but_not_in_count_is_refused_in_one_line(
    tiny_pretrained, cifar_jpeg_folder, tmp_path):
  run = _resumable_run(tiny_pretrained, tmp_path)
  data = _repoint_to_a_copy_of_its_data(run, cifar_jpeg_folder, tmp_path)
  recorded = json.loads((run / pretrain.DATA_FILE).read_text())["train"]["fingerprint"]
  before = snapshot(run)
  image = data / "cat" / "0000.jpg"
  original = image.read_bytes()
  # Another image of another size under the same name; then the original under another name.
  other = next(p for p in sorted((data / "dog").iterdir()) if p.stat().st_size != len(original))
  image.write_bytes(other.read_bytes())
  with pytest.raises(pretrain.DatasetError) as err:
    pretrain.train_and_evaluate(from_config(_fixture_config(data)), str(run))
  message = str(err.value)
  assert "\n" not in message
  assert message.startswith(
      "the train data set's content differs from the one this run started on (same 200 files in "
      f"10 classes, but their names or sizes changed: data.json fingerprint {recorded}, now ")
  assert message.endswith(". Restore the data and rerun, or start a new run in a new --workdir.")
  image.write_bytes(original)
  image.rename(data / "cat" / "renamed.jpg")
  with pytest.raises(pretrain.DatasetError, match=rf"fingerprint {recorded}, now [0-9a-f]{{16}}\)"):
    pretrain.train_and_evaluate(from_config(_fixture_config(data)), str(run))
  assert snapshot(run) == before


@pytest.mark.slow
def test_a_resume_whose_data_json_is_gone_is_refused_naming_it(tiny_pretrained, cifar_jpeg_folder,
                                                                tmp_path):
  run = _resumable_run(tiny_pretrained, tmp_path)
  (run / pretrain.DATA_FILE).unlink()
  before = snapshot(run)
  with pytest.raises(run_files.WorkdirError) as err:
    pretrain.train_and_evaluate(from_config(_fixture_config(cifar_jpeg_folder)), str(run))
  assert str(err.value) == (
      f"--workdir={run} holds checkpoints (steps [3] in {run}/checkpoints) but no data.json, so "
      "the data sets they were trained on are unknown and a resume could change them unnoticed. "
      "Put the run's data.json back to resume, or start over in a new --workdir.")
  assert snapshot(run) == before


@pytest.mark.slow
def test_a_data_json_without_fingerprints_resumes_with_one_warning(
    tiny_pretrained, cifar_jpeg_folder, tmp_path, caplog):
  run = _resumable_run(tiny_pretrained, tmp_path)
  described = json.loads((run / pretrain.DATA_FILE).read_text())
  fingerprints = {role: d.pop("fingerprint") for role, d in described.items()}
  (run / pretrain.DATA_FILE).write_text(json.dumps(described))  # as written before them
  config = _fixture_config(cifar_jpeg_folder)
  config.eval_dataset = ""  # an allowed change that spares compiling the kNN monitor
  with caplog.at_level(logging.WARNING):
    pretrain.train_and_evaluate(from_config(config), str(run))
  assert sorted(os.listdir(run / "checkpoints")) == ["3", "6"]
  warnings = [r.getMessage() for r in caplog.records if "fingerprint" in r.getMessage()]
  assert len(warnings) == 1 and "checked by name and counts only" in warnings[0], warnings
  assert json.loads((run / pretrain.DATA_FILE).read_text())["train"]["fingerprint"] == \
      fingerprints["train"]  # rewritten with it


def _described(folder="folder:/d", fingerprint="0" * 16, **fields):
  return {"dataset": folder, "split": "train", "num_examples": 20, "num_classes": 2,
          "fingerprint": fingerprint, **fields}


def test_check_same_data_on_a_workdir_without_checkpoints_checks_nothing(tmp_path):
  (tmp_path / pretrain.DATA_FILE).write_text(json.dumps({"train": _described(num_examples=9)}))
  pretrain.check_same_data(str(tmp_path), {"train": _described()})  # starts over: no refusal
  (tmp_path / pretrain.DATA_FILE).unlink()
  pretrain.check_same_data(str(tmp_path), {"train": _described()})


def test_check_same_data_leaves_a_changed_evaluation_set_and_names_a_tfds_version(tmp_path):
  (tmp_path / "checkpoints" / "3").mkdir(parents=True)
  tfds_set = _described("tfds:cifar10", tfds_version="cifar10/3.0.1")
  recorded = {"train": tfds_set, "eval": _described("folder:/e", "1" * 16)}
  (tmp_path / pretrain.DATA_FILE).write_text(json.dumps(recorded))
  # eval_dataset may change on a resume (resume_rules.SAFE_TO_CHANGE): not compared.
  pretrain.check_same_data(str(tmp_path), {"train": tfds_set,
                                           "eval": _described("folder:/other", "2" * 16)})
  with pytest.raises(pretrain.DatasetError, match=r"^the eval data set's content differs"):
    pretrain.check_same_data(str(tmp_path), {"train": tfds_set,
                                             "eval": _described("folder:/e", "2" * 16)})
  with pytest.raises(pretrain.DatasetError, match=(
      r"^the train data set's content differs from the one this run started on \(same 20 "
      r"examples, but TFDS cifar10/3.0.1 in data.json, cifar10/3.0.2 now: data.json fingerprint "
      r"0{16}, now 3{16}\)\. Restore the data")):
    pretrain.check_same_data(str(tmp_path), {"train": _described(
        "tfds:cifar10", "3" * 16, tfds_version="cifar10/3.0.2")})


def test_check_same_data_refuses_an_unreadable_data_json(tmp_path):
  (tmp_path / "checkpoints" / "3").mkdir(parents=True)
  (tmp_path / pretrain.DATA_FILE).write_text("[1, 2]")
  with pytest.raises(run_files.WorkdirError, match=r"data.json is unreadable \(a JSON list, "):
    pretrain.check_same_data(str(tmp_path), {"train": _described()})
