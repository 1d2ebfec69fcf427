"""Pictures of training runs from their workdirs' metrics.jsonl and config.json.

    python -m mixsiam_jax.plot WORKDIR [WORKDIR...] --out=curves.png [--dim=2048]
    python -m mixsiam_jax.plot WORKDIR [WORKDIR...] --lam_sweep --out=lam.png [--metric=knn_top1]

The first overlays the runs (labelled by workdir basename) in three panels:
loss terms, z_std (with the 1/sqrt(d) level of a non-collapsed, uniformly
spread output when --dim is given; SimSiam paper Fig. 2) and kNN top-1. The
second plots a metric's last value against method.lam, one point per workdir,
like the MixSiam paper's Fig. 4.
"""
import argparse
import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")  # No display on servers; must precede pyplot.
import matplotlib.pyplot as plt  # noqa: E402

from mixsiam_jax.errors import UserError  # noqa: E402
from mixsiam_jax.run import cli  # noqa: E402
from mixsiam_jax.workdir import metrics_file  # noqa: E402

METRICS_FILE = metrics_file.METRICS_FILE
CONFIG_FILE = "config.json"
LOSS_TERMS = ("loss", "loss_siam", "loss_mix")
DPI = 100
CURVES_SIZE = (15.0, 4.0)  # inches: 1500 x 400 pixels at DPI.
SWEEP_SIZE = (5.0, 4.0)  # 500 x 400 pixels.


class PlotError(UserError):
  """A workdir's file lacks what the plot needs; the message names the file."""


class RunFileNotFoundError(PlotError, FileNotFoundError):
  """A workdir has no metrics.jsonl or config.json."""


def read_metrics(workdir: str) -> List[Dict[str, Any]]:
  """Rows of WORKDIR/metrics.jsonl (one JSON object per logged step).

  Args:
    workdir: a training workdir.

  Returns:
    The rows in file order.

  Raises:
    RunFileNotFoundError: if metrics.jsonl is missing (names the path).
    PlotError, WorkdirError: if it is empty or a line is not a JSON object (names path
      and line).
  """
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.isfile(path):
    raise RunFileNotFoundError(f"{path} does not exist: is {workdir!r} a training workdir "
                            "that has logged at least one step?")
  rows = metrics_file.read_metrics(workdir)
  if not rows:
    raise PlotError(f"{path} is empty: the run has not logged any step yet.")
  return rows


def _number(value: Any) -> Optional[float]:
  """A float from a logged value; NaN/inf may be logged as strings ('nan'); None otherwise."""
  if isinstance(value, bool):
    return None
  if isinstance(value, (int, float)):
    return float(value)
  if isinstance(value, str):
    try:
      return float(value)
    except ValueError:
      return None
  return None


def series(rows: Sequence[Dict[str, Any]], name: str) -> Tuple[List[float], List[float]]:
  """(steps, values) of metric ``name`` over the rows that log it, sorted by step.

  Args:
    rows: metrics.jsonl rows.
    name: metric name.

  Returns:
    Two equally long lists; empty when no row has the metric.
  """
  points = []
  for row in rows:
    value, step = _number(row.get(name)), _number(row.get("step"))
    if value is not None and step is not None:
      points.append((step, value))
  points.sort(key=lambda p: p[0])
  return [p[0] for p in points], [p[1] for p in points]


def _label(workdir: str) -> str:
  return os.path.basename(os.path.normpath(workdir))


def _finish_panel(ax, title: str, ylabel: str, has_data: bool) -> None:
  ax.set_title(title)
  ax.set_xlabel("step")
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3)
  if has_data:
    ax.legend(fontsize=7)
  else:
    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)


def plot_curves(workdirs: Sequence[str], out: str, dim: Optional[int] = None) -> str:
  """Overlays the runs' loss terms, z_std and kNN top-1 over steps.

  Args:
    workdirs: training workdirs (each with metrics.jsonl).
    out: PNG path (1500 x 400 pixels).
    dim: projector output width d; draws the 1/sqrt(d) reference in the z_std panel.

  Returns:
    ``out``.

  Raises:
    UserError: from read_metrics, naming the bad path.
  """
  runs = [(_label(w), read_metrics(w)) for w in workdirs]
  fig, (ax_loss, ax_std, ax_knn) = plt.subplots(1, 3, figsize=CURVES_SIZE, dpi=DPI)
  colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  styles = dict(zip(LOSS_TERMS, ("-", "--", ":")))
  found = {"loss": False, "z_std": False, "knn": False}
  for i, (label, rows) in enumerate(runs):
    colour = colours[i % len(colours)]
    for term in LOSS_TERMS:
      steps, values = series(rows, term)
      if steps:
        ax_loss.plot(steps, values, styles[term], color=colour, label=f"{label} {term}")
        found["loss"] = True
    steps, values = series(rows, "z_std")
    if steps:
      ax_std.plot(steps, values, color=colour, label=label)
      found["z_std"] = True
    steps, values = series(rows, "knn_top1")
    if steps:
      ax_knn.plot(steps, values, "o-", color=colour, markersize=3, label=label)
      found["knn"] = True
  if dim:
    ax_std.axhline(1.0 / math.sqrt(dim), color="k", ls="--", lw=1, label=f"1/sqrt({dim})")
    found["z_std"] = True
  _finish_panel(ax_loss, "loss terms", "loss", found["loss"])
  _finish_panel(ax_std, "std of l2-normalised z", "z_std", found["z_std"])
  _finish_panel(ax_knn, "kNN top-1", "accuracy", found["knn"])
  return _save(fig, out)


def read_lam(workdir: str) -> float:
  """method.lam from WORKDIR/config.json.

  Raises:
    RunFileNotFoundError: if config.json is missing (names the path).
    PlotError: if it is not JSON or has no numeric method.lam (names the path).
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise RunFileNotFoundError(f"{path} does not exist: --lam_sweep reads method.lam from each "
                            "workdir's config.json.")
  try:
    with open(path) as f:
      config = json.load(f)
  except json.JSONDecodeError as e:
    raise PlotError(f"{path} is not valid JSON ({e}).") from e
  lam = config.get("method", {}).get("lam") if isinstance(config, dict) else None
  if _number(lam) is None:
    raise PlotError(f"{path} has no numeric method.lam (found {lam!r}).")
  return float(lam)


def plot_lam_sweep(workdirs: Sequence[str], out: str, metric: str = "knn_top1") -> str:
  """Last value of ``metric`` against method.lam, one point per workdir (paper Fig. 4).

  Args:
    workdirs: training workdirs, each with config.json and metrics.jsonl.
    out: PNG path (500 x 400 pixels).
    metric: the metric to plot (its last logged value per run).

  Returns:
    ``out``.

  Raises:
    UserError: naming the workdir file that is missing or lacks the metric.
  """
  points = []
  for workdir in workdirs:
    steps, values = series(read_metrics(workdir), metric)
    if not values:
      raise PlotError(f"{os.path.join(workdir, METRICS_FILE)} never logs {metric!r}; "
                       "choose another --metric.")
    points.append((read_lam(workdir), values[-1], _label(workdir)))
  points.sort()
  fig, ax = plt.subplots(figsize=SWEEP_SIZE, dpi=DPI)
  ax.plot([p[0] for p in points], [p[1] for p in points], "o-")
  for lam, value, label in points:
    ax.annotate(label, (lam, value), fontsize=6, textcoords="offset points", xytext=(3, 3))
  ax.set_xlabel("lam (weight of L_siam)")
  ax.set_ylabel(metric)
  ax.set_title(f"{metric} vs lam")
  ax.grid(alpha=0.3)
  return _save(fig, out)


def _save(fig, out: str) -> str:
  directory = os.path.dirname(os.path.abspath(out))
  os.makedirs(directory, exist_ok=True)
  fig.tight_layout()
  fig.savefig(out, dpi=DPI)  # No bbox_inches='tight': keeps the pixel size fixed.
  plt.close(fig)
  return out


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  """Parses the command line (see the module docstring)."""
  parser = argparse.ArgumentParser(prog="python -m mixsiam_jax.plot", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("workdirs", nargs="+", metavar="WORKDIR")
  parser.add_argument("--out", default="curves.png", help="PNG file to write.")
  parser.add_argument("--dim", type=int, default=None,
                      help="projector output width d: draw 1/sqrt(d) in the z_std panel.")
  parser.add_argument("--lam_sweep", action="store_true",
                      help="plot --metric against method.lam instead of curves.")
  parser.add_argument("--metric", default="knn_top1", help="metric for --lam_sweep.")
  args = parser.parse_args(argv)
  if args.dim is not None and args.dim <= 0:
    parser.error(f"--dim={args.dim} must be a positive integer.")
  return args


def main(argv: Optional[Sequence[str]] = None) -> str:
  """Runs the command line; returns the PNG path written.

  Raises:
    UserError: a workdir file that is missing or lacks what the plot needs.
  """
  args = parse_args(argv)
  if args.lam_sweep:
    out = plot_lam_sweep(args.workdirs, args.out, args.metric)
  else:
    out = plot_curves(args.workdirs, args.out, args.dim)
  print(f"wrote {out}")
  return out


if __name__ == "__main__":
  cli.run_tool(main)
