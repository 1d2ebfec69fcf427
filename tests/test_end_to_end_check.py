"""benchmarks/end_to_end_check.py --smoke: the whole program's check runs and reports every figure."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from mixsiam_jax.run import cli
from tests import entry_points

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_smoke_check_reports_every_part(cifar_jpeg_folder, tmp_path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_backend_optimization_level=0"}
  result = subprocess.run(
      [sys.executable, "benchmarks/end_to_end_check.py", f"--data={cifar_jpeg_folder}",
       f"--out={tmp_path}", "--smoke"], cwd=REPO, capture_output=True, text=True, env=env,
      timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((tmp_path / "end_to_end.json").read_text())
  assert report["smoke"] and report["batch_size"] == 16
  assert report["bare"]["images_per_second"] > 0, report["bare"]
  assert report["input"]["images_per_second"] > 0 and report["input"]["cores"] >= 1
  program = report["program"]
  assert program["exit_status"] == cli.EXIT_PREEMPTED, program  # stopped by its SIGTERM
  assert program["steps_per_epoch"] == 150 // 16 and program["steps_per_second"] > 0
  assert program["knn_step"] == 9 and 0 <= program["knn_top1"] <= 100
  assert 0 < program["sigterm_to_exit_seconds"] < 60
  assert program["host_peak_rss_mib"] > 0
  assert report["save"]["seconds"] > 0 and report["save"]["state_mib"] > 0
  assert "whole program" in result.stdout and "SIGTERM to exit" in result.stdout


def test_a_missing_data_folder_is_one_line(tmp_path):
  result = entry_points.run("benchmarks/end_to_end_check.py", f"--data={tmp_path / 'none'}",
                            f"--out={tmp_path / 'out'}", "--smoke")
  line = entry_points.one_error_line(result)
  assert result.returncode == 1
  assert str(tmp_path / "none") in line and "does not exist" in line, line
