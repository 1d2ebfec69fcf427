r"""Trains the same tiny runs with two versions of the code and compares them bit for bit.

  python scripts/bit_identity.py --base=REV --data=PATH [--out=DIR]

For a change that must leave training unchanged (a refactor): a git worktree of
REV (e.g. the commit before the change) and this working tree each run, through
main.py on the CPU with fixed seeds and the image folder PATH/<class>/<image>
(a few hundred images; evaluation on the first 10 of each class):
  pretrain   configs/cifar10.py:tiny, 6 steps, seed 3
  probe      configs/linear_probe.py (augmented) of pretrain, 6 steps, batch 40
  probe_fast configs/linear_probe.py:fast of pretrain, 6 steps, batch 40
  knn        configs/knn.py of pretrain
  simsiam    configs/simsiam_cifar10.py:tiny, 4 steps, seed 5
Prints one line per run and exits 0 only when every newest checkpoint is
bitwise identical (scripts/compare_checkpoints.py) and every results.json is
equal apart from the path of the workdir it names.
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
from typing import Any, Dict, List, Optional, Sequence, Tuple

# Before JAX loads (compare_checkpoints imports it): the comparison needs no accelerator,
# and where libtpu is installed it would otherwise search for a TPU and say so.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The sibling module (this script's folder is on sys.path; it puts the repository there).
import compare_checkpoints  # noqa: E402  pylint: disable=g-import-not-at-top
from mixsiam_jax.errors import UserError  # noqa: E402  pylint: disable=g-import-not-at-top
from mixsiam_jax.run import cli  # noqa: E402  pylint: disable=g-import-not-at-top

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROBE = ("--config.batch_size=40", "--config.eval_batch_size=40", "--config.num_train_steps=6",
         "--config.log_every_steps=3", "--config.checkpoint_every_steps=3")


def planned_runs(data: str, out: str) -> List[Tuple[str, List[str]]]:
  """(name, main.py arguments) of each run, in order, with workdirs under ``out``."""
  train = f"--config.dataset=folder:{data}"
  evaluation = [f"--config.eval_dataset=folder:{data}", "--config.eval_split=[:10]"]
  pretrained = f"--config.pretrained={os.path.join(out, 'pretrain')}"
  return [
      ("pretrain", ["--config=configs/cifar10.py:tiny", train, *evaluation,
                    "--config.num_train_steps=6", "--config.seed=3"]),
      ("probe", ["--config=configs/linear_probe.py", pretrained, train, *evaluation, *PROBE,
                 "--config.seed=3"]),
      ("probe_fast", ["--config=configs/linear_probe.py:fast", pretrained, train, *evaluation,
                      *PROBE]),
      ("knn", ["--config=configs/knn.py", pretrained, train, *evaluation]),
      ("simsiam", ["--config=configs/simsiam_cifar10.py:tiny", train, *evaluation,
                   "--config.num_train_steps=4", "--config.seed=5"]),
  ]


def run_all(tree: str, data: str, out: str) -> None:
  """Runs every planned run with the code in ``tree``; raises naming a run that failed."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  for name, args in planned_runs(data, out):
    workdir = os.path.join(out, name)
    result = subprocess.run([sys.executable, "main.py", f"--workdir={workdir}", *args], cwd=tree,
                            env=env, capture_output=True, text=True, check=False)
    if result.returncode:
      log = f"{workdir}.log"  # The whole stderr: a bug's traceback stands above its line.
      os.makedirs(out, exist_ok=True)
      with open(log, "w") as f:
        f.write(result.stderr)
      raise UserError(f"{name} with the code in {tree} exited {result.returncode}: "
                      f"{cli.last_error_line(result.stderr)}; its stderr: {log}")


def results_differences(a: Dict[str, Any], b: Dict[str, Any]) -> List[str]:
  """The keys whose values differ between two results.json dicts, 'pretrained' aside.

  'pretrained' names the pretraining workdir, which differs between the two trees.
  """
  keys = (set(a) | set(b)) - {"pretrained"}
  return sorted(k for k in keys if a.get(k, "<absent>") != b.get(k, "<absent>"))


def compare_outputs(out_a: str, out_b: str) -> List[str]:
  """One line per run: 'name: IDENTICAL' or what differs; the same runs under both."""
  lines = []
  for name, _ in planned_runs("", ""):
    a, b = os.path.join(out_a, name), os.path.join(out_b, name)
    if os.path.isdir(os.path.join(a, "checkpoints")):
      differences = compare_checkpoints.compare(compare_checkpoints.newest_state(a),
                                                compare_checkpoints.newest_state(b))
    else:
      differences = []
    results = os.path.join(a, "results.json")
    if os.path.exists(results):
      with open(results) as fa, open(os.path.join(b, "results.json")) as fb:
        differences += [f"results.json {key}"
                        for key in results_differences(json.load(fa), json.load(fb))]
    lines.append(f"{name}: " + ("IDENTICAL" if not differences else
                                "DIFFERENT (" + "; ".join(differences[:5]) + ")"))
  return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs both trees and compares them; returns the exit status (0: all identical)."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
  parser.add_argument("--base", required=True, help="the git revision to compare against")
  parser.add_argument("--data", required=True, help="an image folder PATH/<class>/<image>")
  parser.add_argument("--out", default=None, help="where the runs go (default: a temp dir)")
  args = parser.parse_args(argv)
  out = args.out or tempfile.mkdtemp(prefix="bit_identity_")
  base_tree = os.path.join(out, "base_tree")
  subprocess.run(["git", "worktree", "add", "--detach", base_tree, args.base], cwd=ROOT,
                 check=True, capture_output=True)
  try:
    run_all(base_tree, os.path.abspath(args.data), os.path.join(out, "base"))
    run_all(str(ROOT), os.path.abspath(args.data), os.path.join(out, "now"))
  finally:
    subprocess.run(["git", "worktree", "remove", "--force", base_tree], cwd=ROOT, check=False,
                   capture_output=True)
  lines = compare_outputs(os.path.join(out, "base"), os.path.join(out, "now"))
  print("\n".join(lines))
  print(f"runs in {out}")
  return 0 if all(line.endswith("IDENTICAL") for line in lines) else 1


if __name__ == "__main__":
  cli.run_tool(main)
