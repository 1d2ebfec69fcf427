"""Tests of scripts/cifar10_study.py: the run plan, the commands, the summary and the table."""
import json
import math
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "scripts"))
import cifar10_study  # noqa: E402  pylint: disable=g-import-not-at-top

from configs import cifar10_study as study_config  # noqa: E402


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
