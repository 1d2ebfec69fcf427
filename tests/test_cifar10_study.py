"""Tests of scripts/cifar10_study.py: the data export, run plan, commands, summary and table."""
import json
import math
import os
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "scripts"))
import cifar10_study  # noqa: E402  pylint: disable=g-import-not-at-top

from configs import cifar10_study as study_config  # noqa: E402
from mixsiam_jax.data import tfds_prepare  # noqa: E402
from tests import entry_points  # noqa: E402


def test_plan_runs_main_rows_with_every_seed_and_ablations_once():
  runs = cifar10_study.planned_runs(["simsiam", "max", "mean", "none", "nomix"], [0, 1])
  assert [r["name"] for r in runs] == ["simsiam_s0", "max_s0", "simsiam_s1", "max_s1",
                                       "mean_s0", "none_s0", "nomix_s0"]
  with pytest.raises(ValueError, match="maxx"):
    cifar10_study.planned_runs(["maxx"], [0])
  with pytest.raises(ValueError, match="main_seeds"):
    cifar10_study.planned_runs(["max"], [])


def test_rows_differ_only_in_the_method():
  base = study_config.get_config("max").to_dict()
  for row, method in study_config.ROWS.items():
    config = study_config.get_config(row).to_dict()
    assert {k: v for k, v in config.items() if k != "method"} == \
        {k: v for k, v in base.items() if k != "method"}
    assert all(config["method"][k] == v for k, v in method.items())
  assert study_config.get_config("nomix").method.mixture is False
  assert study_config.get_config("simsiam").method.lam == 1.0


# TFDS order of the mocked cifar10 train split: image i is filled with the value i.
MOCK_LABELS = (3, 0, 3, 9, 0, 3, 7)


def _mock_cifar10(builder, split, **kwargs):
  """The mocked data source: image i is filled with the value i."""
  del builder, kwargs
  assert split == "train"
  return [{"image": np.full((32, 32, 3), i, np.uint8), "label": label, "id": f"train_{i}"}
          for i, label in enumerate(MOCK_LABELS)]


@pytest.fixture(autouse=True)
def _mock_data_needs_no_preparation(monkeypatch):
  # tests/test_data_tfds_prepare.py tests the preparation; mock data have none.
  monkeypatch.setattr(tfds_prepare, "ensure_prepared", lambda *args, **kwargs: None)


def test_tfds_export_writes_each_class_in_tfds_order(tmp_path):
  with tfds.testing.mock_data(as_data_source_fn=_mock_cifar10):
    names = tfds.builder("cifar10").info.features["label"].names
    folder = cifar10_study.data_folder("tfds:cifar10", str(tmp_path))
  assert folder == str(tmp_path / "data" / "train")
  assert sorted(os.listdir(folder)) == sorted(names) and len(names) == 10
  counts = {n: len(os.listdir(os.path.join(folder, n))) for n in names}
  assert counts == {n: MOCK_LABELS.count(i) for i, n in enumerate(names)}
  # The n-th image of a class in TFDS order is <class>/<n>.png, pixels unchanged (PNG).
  cat3 = [i for i, label in enumerate(MOCK_LABELS) if label == 3]
  assert sorted(os.listdir(os.path.join(folder, names[3]))) == ["0000.png", "0001.png", "0002.png"]
  for n, index in enumerate(cat3):
    pixels = np.asarray(Image.open(os.path.join(folder, names[3], f"{n:04d}.png")))
    np.testing.assert_array_equal(pixels, np.full((32, 32, 3), index, np.uint8))
  assert not os.path.exists(folder + ".partial")


def test_tfds_export_is_reused_and_an_interrupted_one_redone(tmp_path):
  folder = tmp_path / "data" / "train"
  partial = tmp_path / "data" / "train.partial"
  (partial / "stale").mkdir(parents=True)  # left by an interrupted export
  with tfds.testing.mock_data(as_data_source_fn=_mock_cifar10):
    cifar10_study.data_folder("tfds:cifar10", str(tmp_path))
  assert not partial.exists() and not (folder / "stale").exists()
  assert sum(len(files) for _, _, files in os.walk(folder)) == len(MOCK_LABELS)
  (folder / "marker").write_text("kept")

  def fail(*args, **kwargs):
    raise AssertionError("a complete export must not be read again")
  with tfds.testing.mock_data(as_data_source_fn=fail):
    assert cifar10_study.data_folder("tfds:cifar10", str(tmp_path)) == str(folder)
  assert (folder / "marker").read_text() == "kept"


def test_runs_read_the_tfds_export(tmp_path):
  with tfds.testing.mock_data(as_data_source_fn=_mock_cifar10):
    folder = cifar10_study.data_folder("tfds:cifar10", str(tmp_path))
  run = cifar10_study.planned_runs(["max"], [0])[0]
  cmd = cifar10_study.run_command(run, folder, str(tmp_path), [])
  spec = f"folder:{tmp_path}/data/train"
  assert f"--config.dataset={spec}" in cmd and f"--config.eval_dataset={spec}" in cmd


def test_dataset_option_errors_name_the_value(tmp_path):
  with pytest.raises(cifar10_study.StudyError, match="'cifar10'.*tfds:cifar10"):
    cifar10_study.data_folder("cifar10", str(tmp_path))
  with pytest.raises(cifar10_study.StudyError, match="/no/such/dir is not a directory"):
    cifar10_study.data_folder("folder:/no/such/dir", str(tmp_path))
  assert cifar10_study.data_folder(f"folder:{tmp_path}", "/unused") == str(tmp_path)
  assert cifar10_study.parse_args(["--out=/o"]).dataset == "tfds:cifar10"


def test_command_points_main_at_the_folder_seed_and_workdir(tmp_path):
  run = cifar10_study.planned_runs(["none"], [3])[0]
  cmd = cifar10_study.run_command(run, "/data/c10", str(tmp_path), ["--config.image_size=16"])
  assert cmd[1].endswith("main.py") and cmd[2].endswith("configs/cifar10_study.py:none")
  assert f"--workdir={tmp_path}/none_s3" in cmd
  assert "--config.dataset=folder:/data/c10" in cmd and "--config.eval_dataset=folder:/data/c10" in cmd
  assert "--config.seed=3" in cmd and cmd[-1] == "--config.image_size=16"


def test_overrides_apply_to_the_random_init_config():
  config = study_config.get_config("max")
  cifar10_study._apply_overrides(config, ["--config.image_size=16", "--config.model.width=4",
                                          "--config.optim.base_lr=0.1", "--config.online_probe=false"])
  assert (config.image_size, config.model.width, config.optim.base_lr) == (16, 4, 0.1)
  assert config.online_probe is False


def _write_run(workdir, rows):
  os.makedirs(workdir)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)


def test_summary_and_table_report_mean_and_sample_std(tmp_path):
  for seed, top1 in ((0, 40.0), (1, 44.0)):
    rows = [{"step": s, "loss": -0.1 * s, "z_std": 0.04, "uptime": 60.0 * s} for s in range(1, 11)]
    rows.insert(5, {"step": 5, "knn_top1": top1 - 5, "knn_top5": 80.0})
    rows.append({"step": 10, "knn_top1": top1, "knn_top5": 90.0, "uptime": 660.0})
    _write_run(tmp_path / f"max_s{seed}", rows)
  summaries = {f"max_s{s}": cifar10_study.summarise_run(str(tmp_path / f"max_s{s}"))
               for s in (0, 1)}
  assert summaries["max_s0"]["knn_top1"] == 40.0
  assert summaries["max_s0"]["knn_curve"] == [(5, 35.0), (10, 40.0)]
  assert summaries["max_s0"]["loss"] == pytest.approx(-0.8)  # mean of the last 5 logged losses
  assert summaries["max_s0"]["minutes"] == pytest.approx(11.0)
  summaries["random_s0"] = {"knn_top1": 30.0, "knn_top5": 70.0}
  text = cifar10_study.table(summaries, 512)
  assert f"{1 / math.sqrt(512):.4f}" in text
  line = next(l for l in text.splitlines() if l.startswith("| MixSiam, max"))
  # mean 42, sample standard deviation sqrt(8) = 2.83
  assert "| 0,1 | 40.00, 44.00 | 42.00 | 2.83 |" in line
  assert "| random initialisation | 0 | 30.00 | 30.00 | - |" in text


def test_unfinished_run_is_named(tmp_path):
  _write_run(tmp_path / "max_s0", [{"step": 1, "loss": -0.1, "z_std": 0.04}])
  with pytest.raises(ValueError, match="max_s0"):
    cifar10_study.summarise_run(str(tmp_path / "max_s0"))


def test_a_bad_dataset_option_is_one_line(tmp_path):
  result = entry_points.run("scripts/cifar10_study.py", "--dataset=folder:/no/such/dir",
                            f"--out={tmp_path}")
  assert "/no/such/dir is not a directory" in entry_points.one_error_line(result)


def test_a_failed_run_is_named_with_its_own_error_and_log(tmp_path):
  # Two images per class: far too few for the study config (its batch, its held-out split).
  data = tmp_path / "data"
  for name in ("cat", "dog"):
    (data / name).mkdir(parents=True)
    for i in range(2):
      Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(data / name / f"{i}.png")
  out = tmp_path / "out"
  result = entry_points.run("scripts/cifar10_study.py", f"--dataset=folder:{data}",
                            f"--out={out}", "--rows=simsiam", "--main_seeds=0", "--jobs=1")
  line = entry_points.one_error_line(result)
  assert result.returncode == 1
  log = out / "simsiam_s0.log"
  child = [l for l in log.read_text().splitlines() if l.startswith("error: ")]
  assert len(child) == 1, log.read_text()[-3000:]  # main.py's own one line, in the run's log
  assert line == (f"error: run simsiam_s0 failed (status 1): {child[0].rstrip('.')}; "
                  f"its log: {log}")
