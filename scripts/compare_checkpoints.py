r"""Compares the newest checkpoints of two workdirs array by array, bit for bit.

  python scripts/compare_checkpoints.py WORKDIR_A WORKDIR_B

Prints one line per differing array (path, max |a - b|) and "IDENTICAL" or
"DIFFERENT"; exits 0 only when both newest steps are the same step and every
array (params, BatchNorm statistics, optimiser state, rng, step) is bitwise equal.
Use it to check that a refactor leaves training unchanged: train the same tiny
config with the same seed before and after, then compare.
"""
import argparse
import os
import sys
from typing import Any, Dict, Optional, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top  (after the repository is on sys.path)
from mixsiam_jax.errors import UserError  # noqa: E402
from mixsiam_jax.run import cli  # noqa: E402
# pylint: enable=g-import-not-at-top


def newest_state(workdir: str) -> Dict[str, np.ndarray]:
  """{'path': array} of the 'state' item of the newest checkpoint step of ``workdir``.

  Raises:
    UserError: ``workdir`` has no checkpoint step.
  """
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  if not os.path.isdir(directory):
    raise UserError(f"{directory} does not exist: pass the workdirs of two training runs.")
  steps = sorted(int(name) for name in os.listdir(directory) if name.isdigit())
  if not steps:
    raise UserError(f"{directory} holds no complete checkpoint step.")
  tree = ocp.PyTreeCheckpointer().restore(os.path.join(directory, str(steps[-1]), "state"))
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  out = {"<step directory>": np.asarray(steps[-1])}
  out.update({jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat})
  return out


def compare(a: Dict[str, Any], b: Dict[str, Any]) -> Sequence[str]:
  """Lines describing every difference between two flat checkpoint dicts (empty: identical)."""
  lines = [f"only in A: {k}" for k in sorted(set(a) - set(b))]
  lines += [f"only in B: {k}" for k in sorted(set(b) - set(a))]
  for key in sorted(set(a) & set(b)):
    x, y = a[key], b[key]
    if x.shape != y.shape or x.dtype != y.dtype:
      lines.append(f"{key}: {x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)}")
    elif x.tobytes() != y.tobytes():
      diff = np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))
      lines.append(f"{key}: max |a - b| = {diff:.3g}")
  return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Compares two workdirs; returns the exit status (0: identical)."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
  parser.add_argument("workdir_a")
  parser.add_argument("workdir_b")
  args = parser.parse_args(argv)
  a, b = newest_state(args.workdir_a), newest_state(args.workdir_b)
  lines = compare(a, b)
  for line in lines:
    print(line)
  print(f"{'DIFFERENT' if lines else 'IDENTICAL'}: {len(a)} arrays in A, {len(b)} in B")
  return 1 if lines else 0


if __name__ == "__main__":
  cli.run_tool(main, jax_backend=True)
