"""Plots from fake workdirs: curves, lam sweep, and the error paths."""
import json

import numpy as np
import pytest
from PIL import Image

from mixsiam_jax import plot
from tests import entry_points


def make_workdir(root, name, lam=0.5, rows=None):
  workdir = root / name
  workdir.mkdir()
  if rows is None:
    rows = []
    for step in range(0, 100, 10):
      row = {"step": step, "loss": -0.5 - step / 200, "loss_siam": -0.6, "lr": 0.03}
      if lam < 1:
        row["loss_mix"] = -0.4
      if step % 20 == 0:
        row["z_std"] = 0.02 + step / 1e4
      if step % 50 == 0:
        row["knn_top1"] = lam * 0.5 + step / 1000
      rows.append(row)
    rows.append({"step": 100, "loss": "nan"})  # Non-finite values are logged as strings.
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  (workdir / "config.json").write_text(json.dumps({"method": {"lam": lam, "mixture": True}}))
  return str(workdir)


def png_size(path):
  with Image.open(path) as image:
    return image.size


def test_curves_overlay_runs(tmp_path):
  runs = [make_workdir(tmp_path, "mixsiam", 0.5), make_workdir(tmp_path, "simsiam", 1.0)]
  out = str(tmp_path / "figs" / "curves.png")
  assert plot.main(runs + [f"--out={out}", "--dim=2048"]) == out
  assert png_size(out) == (1500, 400)
  # A run that never logged kNN or z_std still plots (panels say "no data").
  sparse = make_workdir(tmp_path, "sparse", rows=[{"step": 1, "loss": 1.0}, {"step": 2}])
  plot.main([sparse, f"--out={tmp_path / 'sparse.png'}"])
  assert png_size(tmp_path / "sparse.png") == (1500, 400)


def test_series_skips_missing_and_sorts():
  rows = [{"step": 20, "a": 2.0}, {"step": 10, "a": 1}, {"step": 30}, {"step": 40, "a": "inf"},
          {"step": 50, "a": "oops"}]
  steps, values = plot.series(rows, "a")
  assert steps == [10, 20, 40] and values[:2] == [1.0, 2.0] and np.isinf(values[2])
  assert plot.series(rows, "b") == ([], [])


def test_lam_sweep(tmp_path):
  runs = [make_workdir(tmp_path, f"lam{lam}", lam) for lam in (1.0, 0.25, 0.5, 0.75)]
  out = str(tmp_path / "lam.png")
  plot.main(runs + ["--lam_sweep", f"--out={out}"])
  assert png_size(out) == (500, 400)
  plot.main(runs + ["--lam_sweep", "--metric=loss_siam", f"--out={out}"])
  # The lam = 1 run (plain SimSiam) has no mixed branch, so it never logs loss_mix.
  with pytest.raises(ValueError, match=r"lam1\.0.metrics\.jsonl never logs 'loss_mix'"):
    plot.main(runs[::-1] + ["--lam_sweep", "--metric=loss_mix", f"--out={out}"])
  assert plot.read_lam(runs[1]) == 0.25


def test_errors_name_the_path(tmp_path):
  missing = tmp_path / "nothing"
  missing.mkdir()
  with pytest.raises(FileNotFoundError, match=r"nothing.metrics\.jsonl does not exist"):
    plot.main([str(missing), f"--out={tmp_path / 'x.png'}"])
  empty = make_workdir(tmp_path, "empty", rows=[])
  with pytest.raises(ValueError, match=r"empty.metrics\.jsonl is empty"):
    plot.main([empty, f"--out={tmp_path / 'x.png'}"])
  truncated = tmp_path / "truncated"
  truncated.mkdir()
  # A run killed mid-write leaves a partial last line: dropped, the rest is plotted.
  (truncated / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "lo')
  assert plot.read_metrics(str(truncated)) == [{"step": 1, "loss": 1.0}]
  # A damaged line in the middle is an error naming the file and line.
  (truncated / "metrics.jsonl").write_text('{"step": 1, "lo\n{"step": 2, "loss": 1.0}\n')
  with pytest.raises(ValueError, match=r"truncated.metrics\.jsonl:1 is not valid JSON"):
    plot.read_metrics(str(truncated))
  no_lam = make_workdir(tmp_path, "nolam")
  (tmp_path / "nolam" / "config.json").write_text(json.dumps({"method": {}}))
  with pytest.raises(ValueError, match=r"nolam.config\.json has no numeric method\.lam"):
    plot.main([no_lam, "--lam_sweep", f"--out={tmp_path / 'x.png'}"])
  (tmp_path / "nolam" / "config.json").unlink()
  with pytest.raises(FileNotFoundError, match=r"nolam.config\.json does not exist"):
    plot.read_lam(no_lam)
  assert not (tmp_path / "x.png").exists()


def test_the_command_line_names_a_missing_file_in_one_line(tmp_path):
  result = entry_points.run("-m", "mixsiam_jax.plot", tmp_path / "nothing",
                            f"--out={tmp_path / 'x.png'}")
  line = entry_points.one_error_line(result)
  assert result.returncode == 1
  assert line.startswith(f"error: {tmp_path / 'nothing' / 'metrics.jsonl'} does not exist"), line
  assert not (tmp_path / "x.png").exists()
