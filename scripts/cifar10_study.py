r"""CPU-sized CIFAR-10 study: kNN top-1 on a held-out part for SimSiam and MixSiam rows.

    python scripts/cifar10_study.py --out=/tmp/study                      # TFDS cifar10
    python scripts/cifar10_study.py --dataset=folder:/tmp/cifar10/train --out=/tmp/study

Data: `--dataset=tfds:cifar10` (the default) exports the TFDS training split
once to a lossless PNG folder, OUT/data/train/<class>/<NNNN>.png (image NNNN of
the class in TFDS order), and then runs exactly as on `--dataset=folder:PATH`
(PATH/<class>/<image>, e.g. CIFAR-10 as JPEG files). The study config slices
every class of the folder: images 0-4499 pretrain, 4500-4999 are held out
(the export and the --dataset checks: scripts/cifar10_study_data.py).

Pretrains every row of configs/cifar10_study.py (simsiam, max, mean, none,
nomix) with `main.py` in child processes, `--jobs` at a time, each pinned to its
own share of the cores. The main rows (simsiam, max) run with every seed in
--main_seeds, the ablations with the first seed. Random initialisation is
evaluated in this process for every main seed.

Runs resume: a finished run is skipped, an interrupted one continues from its
checkpoint (rerun the same command). At the end it writes, in --out:
  results.json  every run's final kNN top-1/top-5, z_std, loss and wall time;
  results.md    the table (mean and sample standard deviation over seeds);
  curves.png    loss terms, z_std (with 1/sqrt(d)) and kNN top-1 of every run.
"""
import argparse
import ast
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent import futures
from typing import Any, Dict, List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# pylint: disable=g-import-not-at-top  (after the repository is on sys.path)
# The sibling module (this script's folder is on sys.path): --dataset's image folder.
from cifar10_study_data import StudyError, data_folder  # noqa: E402
from configs import cifar10_study  # noqa: E402
from mixsiam_jax.options import programs
from mixsiam_jax.run import cli  # noqa: E402
from mixsiam_jax.workdir import metrics_file  # noqa: E402
# pylint: enable=g-import-not-at-top

MAIN_ROWS = ("simsiam", "max")
ABLATION_ROWS = ("mean", "none", "nomix")
ROW_TITLES = {
    "random": "random initialisation",
    "simsiam": "SimSiam (lam = 1)",
    "max": "MixSiam, max (paper)",
    "mean": "MixSiam, mean",
    "none": "MixSiam, none",
    "nomix": "MixSiam max, no mixture",
}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  """Command-line options of the study."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dataset", default="tfds:cifar10",
                      help="tfds:NAME (its train split is exported once to OUT/data/train as PNG) "
                           "or folder:PATH (PATH/<class>/<image>, e.g. /tmp/cifar10/train).")
  parser.add_argument("--tfds_data_dir", default=None,
                      help="TFDS data folder (default: TFDS_DATA_DIR or ~/tensorflow_datasets).")
  parser.add_argument("--out", required=True,
                      help="Directory for the data export, the runs and the report.")
  parser.add_argument("--rows", default=",".join(MAIN_ROWS + ABLATION_ROWS),
                      help="Comma-separated rows of configs/cifar10_study.py to pretrain.")
  parser.add_argument("--main_seeds", default="0,1",
                      help="Seeds of the main rows (simsiam, max); ablations use the first.")
  parser.add_argument("--jobs", type=int, default=2, help="Runs trained at the same time.")
  parser.add_argument("--override", action="append", default=[],
                      help="Extra --config.X=Y flags for every run (e.g. a shorter smoke test).")
  parser.add_argument("--report_only", action="store_true",
                      help="Only collect the finished runs into the report.")
  return parser.parse_args(argv)


def planned_runs(rows: Sequence[str], seeds: Sequence[int]) -> List[Dict[str, Any]]:
  """The (row, seed) pairs to pretrain: main rows with every seed, ablations with the first.

  Args:
    rows: rows of configs/cifar10_study.ROWS.
    seeds: seeds of the main rows; ablations use seeds[0].

  Returns:
    Dicts {'row', 'seed', 'name'} in launch order (main rows first, seeds interleaved).

  Raises:
    StudyError: for an unknown row or no seed.
  """
  if not seeds:
    raise StudyError("--main_seeds is empty; give at least one seed, e.g. --main_seeds=0,1.")
  unknown = [r for r in rows if r not in cifar10_study.ROWS]
  if unknown:
    raise StudyError(f"Unknown study rows {unknown}; choose from {sorted(cifar10_study.ROWS)}.")
  runs = []
  for seed in seeds:
    runs += [dict(row=r, seed=seed) for r in rows if r in MAIN_ROWS]
  runs += [dict(row=r, seed=seeds[0]) for r in rows if r not in MAIN_ROWS]
  for run in runs:
    run["name"] = f"{run['row']}_s{run['seed']}"
  return runs


def _seeds(text: str) -> List[int]:
  """The seeds of --main_seeds ('0,1'); StudyError naming the value if one is not an integer."""
  try:
    return [int(s) for s in text.split(",") if s.strip()]
  except ValueError:
    raise StudyError(f"--main_seeds={text}: give comma-separated integers, e.g. 0,1.") from None


def run_command(run: Dict[str, Any], folder: str, out: str,
                overrides: Sequence[str]) -> List[str]:
  """The main.py command line that pretrains one run on the image folder ``folder``."""
  spec = f"folder:{os.path.abspath(folder)}"
  return [sys.executable, os.path.join(REPO, "main.py"),
          f"--config={os.path.join(REPO, 'configs', 'cifar10_study.py')}:{run['row']}",
          f"--workdir={os.path.join(out, run['name'])}",
          f"--config.dataset={spec}", f"--config.eval_dataset={spec}",
          f"--config.seed={run['seed']}", *overrides]


def _pretrain(run: Dict[str, Any], folder: str, out: str, overrides: Sequence[str],
              cores: Optional[Sequence[int]]) -> float:
  """Runs one pretraining child process to completion; returns its wall seconds.

  Raises:
    StudyError: the run failed; names its status, its own error line and its log.
  """
  log_path = os.path.join(out, f"{run['name']}.log")
  start = time.time()
  with open(log_path, "a") as log:
    attempt = log.tell()  # The log is appended to by every attempt: read only this one's.
    preexec = (lambda: os.sched_setaffinity(0, cores)) if cores else None
    result = subprocess.run(run_command(run, folder, out, overrides), stdout=log,
                            stderr=subprocess.STDOUT, cwd=REPO, preexec_fn=preexec, check=False)
  if result.returncode != 0:
    with open(log_path, errors="replace") as log:
      log.seek(attempt)
      cause = cli.last_error_line(log.read()).rstrip(".")
    raise StudyError(f"run {run['name']} failed (status {result.returncode}): {cause}; "
                     f"its log: {log_path}")
  return time.time() - start


def pretrain_all(runs: Sequence[Dict[str, Any]], folder: str, out: str, jobs: int,
                 overrides: Sequence[str]) -> None:
  """Pretrains the runs, `jobs` at a time, each on its own share of the cores."""
  cores = sorted(os.sched_getaffinity(0))
  jobs = max(1, min(jobs, len(cores)))
  lanes = [cores[i::jobs] for i in range(jobs)] if jobs > 1 else [None]
  with futures.ThreadPoolExecutor(max_workers=jobs) as pool:
    free = list(range(jobs))
    pending = {}
    queue = list(runs)
    while queue or pending:
      while queue and free:
        lane = free.pop(0)
        run = queue.pop(0)
        print(f"[{time.strftime('%H:%M:%S')}] start {run['name']} on cores {lanes[lane]}",
              flush=True)
        pending[pool.submit(_pretrain, run, folder, out, overrides, lanes[lane])] = (lane, run)
      done, _ = futures.wait(pending, return_when=futures.FIRST_COMPLETED)
      for future in done:
        lane, run = pending.pop(future)
        free.append(lane)
        seconds = future.result()  # re-raises a failed run's error
        print(f"[{time.strftime('%H:%M:%S')}] done  {run['name']} in {seconds / 60:.1f} min",
              flush=True)


def random_init_knn(folder: str, seed: int, overrides: Sequence[str]) -> Dict[str, float]:
  """kNN top-1/top-5 of the randomly initialised encoder of the study config (row max).

  The parameters are exactly those a pretraining run with this seed starts from.
  """
  # Deferred: the parent loads JAX and TensorFlow only once the runs have trained, quietly.
  cli.import_tensorflow()
  from mixsiam_jax import pretrain, recipe, sharding  # pylint: disable=g-import-not-at-top
  from mixsiam_jax.data import sources  # pylint: disable=g-import-not-at-top
  from mixsiam_jax.evaluation import evaluators  # pylint: disable=g-import-not-at-top
  cli.start_jax()
  spec = f"folder:{os.path.abspath(folder)}"
  opts = study_options(overrides, dataset=spec, eval_dataset=spec, seed=seed)
  mesh = sharding.create_mesh()
  info = sources.get_dataset_info(opts.data.dataset, opts.data.split)
  training = recipe.build_training(opts, mesh, info.num_examples, info.num_classes)
  state = pretrain.state_functions(opts, training, mesh).init()  # The initial state.
  monitor = evaluators.pretraining_knn_monitor(training.network, mesh, opts.evaluation, opts.knn)
  return monitor(state)


def study_options(overrides: Sequence[str], **fields: Any) -> programs.PretrainOptions:
  """The options of the study config's row max with top-level ``fields``, then ``overrides``."""
  config = cifar10_study.get_config("max")
  for key, value in fields.items():
    config[key] = value
  _apply_overrides(config, overrides)
  return programs.pretrain_options(config)


def _apply_overrides(config, overrides: Sequence[str]) -> None:
  """Applies '--config.a.b=value' strings (as given to main.py) to ``config``."""
  pairs = (item.removeprefix("--config.").partition("=") for item in overrides)
  config.update_from_flattened_dict({key: _parse_value(value) for key, _, value in pairs})


def _parse_value(text: str) -> Any:
  """A Python literal ('8', '0.5', 'true', '(0.2, 1.0)'), else the text itself."""
  if text.lower() in ("true", "false"):
    return text.lower() == "true"
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def summarise_run(workdir: str) -> Dict[str, Any]:
  """Final metrics of a finished run read from its metrics.jsonl.

  Returns:
    {'knn_top1', 'knn_top5', 'knn_curve' [(step, top1)], 'z_std', 'loss', 'steps', 'minutes'};
    z_std and loss are the mean over the last 5 logged rows (smooths batch noise).

  Raises:
    StudyError: if the run has no kNN result yet (not finished).
  """
  rows = metrics_file.read_metrics(workdir)
  knn = [r for r in rows if "knn_top1" in r]
  train_rows = [r for r in rows if "loss" in r]
  if not knn or not train_rows:
    raise StudyError(f"{workdir} has no final kNN result; finish it by rerunning the study.")
  last = train_rows[-5:]
  return dict(knn_top1=knn[-1]["knn_top1"], knn_top5=knn[-1]["knn_top5"],
              knn_curve=[(r["step"], r["knn_top1"]) for r in knn],
              z_std=statistics.fmean(r["z_std"] for r in last),
              loss=statistics.fmean(r["loss"] for r in last),
              steps=train_rows[-1]["step"], minutes=rows[-1].get("uptime", float("nan")) / 60)


def table(results: Dict[str, Dict[str, Any]], projector_dim: int) -> str:
  """A Markdown table: one line per row, kNN top-1 per seed, mean and sample std.

  Args:
    results: run name ('ROW_sSEED') -> summarise_run output (random rows: knn only).
    projector_dim: d of z, for the 1/sqrt(d) collapse reference.

  Returns:
    The table as Markdown text.
  """
  lines = ["| row | seeds | kNN top-1 per seed (%) | mean | std | z_std (1/sqrt(d) = "
           f"{1 / math.sqrt(projector_dim):.4f}) | minutes per run |",
           "|---|---|---|---:|---:|---|---|"]
  for row in ("random",) + MAIN_ROWS + ABLATION_ROWS:
    names = sorted(n for n in results if n.rsplit("_s", 1)[0] == row)
    if not names:
      continue
    runs = [results[n] for n in names]
    top1 = [r["knn_top1"] for r in runs]
    std = f"{statistics.stdev(top1):.2f}" if len(top1) > 1 else "-"
    zstd = ", ".join(f"{r['z_std']:.4f}" for r in runs if "z_std" in r) or "-"
    mins = ", ".join(f"{r['minutes']:.0f}" for r in runs if "minutes" in r) or "-"
    seeds = ",".join(n.rsplit("_s", 1)[1] for n in names)
    lines.append(f"| {ROW_TITLES[row]} | {seeds} | {', '.join(f'{t:.2f}' for t in top1)} | "
                 f"{statistics.fmean(top1):.2f} | {std} | {zstd} | {mins} |")
  return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Dict[str, Any]]:
  """Runs the study (or collects it with --report_only) and writes the report.

  Raises:
    StudyError: a bad option or data set, a failed run (named with its own error) or an
      unfinished run in the report.
  """
  args = parse_args(argv)
  seeds = _seeds(args.main_seeds)
  runs = planned_runs([r for r in args.rows.split(",") if r], seeds)
  folder = data_folder(args.dataset, args.out, args.tfds_data_dir)
  os.makedirs(args.out, exist_ok=True)
  overrides = [o if o.startswith("--config.") else f"--config.{o}" for o in args.override]
  if not args.report_only:
    pretrain_all(runs, folder, args.out, args.jobs, overrides)
  results_path = os.path.join(args.out, "results.json")
  results = {}
  if os.path.exists(results_path):
    with open(results_path) as f:
      results = {k: v for k, v in json.load(f).items() if k.startswith("random_")}
  for seed in seeds:
    if f"random_s{seed}" not in results:
      results[f"random_s{seed}"] = random_init_knn(folder, seed, overrides)
  for run in runs:
    results[run["name"]] = summarise_run(os.path.join(args.out, run["name"]))
  with open(results_path + ".tmp", "w") as f:
    json.dump(results, f, indent=1)
  os.replace(results_path + ".tmp", results_path)
  dim = study_options(overrides).model.projector_dim
  text = table(results, dim)
  with open(os.path.join(args.out, "results.md"), "w") as f:
    f.write(text)
  # Deferred: matplotlib only once the report is written.
  from mixsiam_jax import plot  # pylint: disable=g-import-not-at-top
  plot.plot_curves([os.path.join(args.out, r["name"]) for r in runs],
                   os.path.join(args.out, "curves.png"), dim=dim)
  print(text)
  return results


if __name__ == "__main__":
  cli.run_tool(main)
