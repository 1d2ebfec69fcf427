r"""Training rate on a folder with rotten JPEGs against the same folder intact, in one run.

  python benchmarks/bad_images_rate.py --folder=PATH --fraction=0.1 --steps=150

Copies the image folder ``PATH`` (PATH/<class>/<image>, e.g. 40 CIFAR-10 JPEGs
per class) twice into ``--scratch``: one copy intact, one in which ``--fraction``
of the JPEGs are rotten the way damaged downloads are (their first third kept,
random bytes after it, the end marker FF D9 last, so they pass every cheap
check). Then it trains ``configs/cifar10.py:tiny`` for ``--steps`` steps through
``main.py`` on each copy and prints, per copy, the steps/s from the first step
to the last (compilation excluded), the run's wall time, the unreadable images
it named and the libjpeg lines that reached its console; then one line
``ratio rotten / intact: X.XX``.
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from mixsiam_jax.errors import UserError  # noqa: E402  pylint: disable=g-import-not-at-top
from mixsiam_jax.run import cli, stderr_filter  # noqa: E402  pylint: disable=g-import-not-at-top  (light)


def make_rotten(root: str, fraction: float, seed: int = 0) -> int:
  """Rots ``fraction`` of the JPEGs under ``root`` in place; returns how many."""
  rng = random.Random(seed)
  jpegs = sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files
                 if f.lower().endswith((".jpg", ".jpeg")))
  chosen = rng.sample(jpegs, round(len(jpegs) * fraction))
  for path in chosen:
    with open(path, "rb") as f:
      data = f.read()
    keep = len(data) // 3
    with open(path, "wb") as f:
      f.write(data[:keep] + rng.randbytes(len(data) - keep - 2) + b"\xff\xd9")
  return len(chosen)


def train(folder: str, workdir: str, steps: int, log_every: int) -> dict:
  """Trains the tiny config on ``folder``; returns its rate and console figures."""
  started = time.time()
  proc = subprocess.run(
      [sys.executable, "main.py", "--config=configs/cifar10.py:tiny", f"--workdir={workdir}",
       f"--config.dataset=folder:{folder}", "--config.eval_dataset=",
       f"--config.num_train_steps={steps}", f"--config.log_every_steps={log_every}",
       f"--config.checkpoint_every_steps={steps}"],
      cwd=REPO, capture_output=True, text=True, errors="replace", check=False)
  wall = time.time() - started
  console = proc.stdout + proc.stderr
  if proc.returncode:
    raise UserError(f"main.py on {folder} ended with status {proc.returncode}: "
                    f"{cli.last_error_line(console)}")
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  rates = [r for r in rows if "steps_per_sec" in r]
  # The rate is measured between log steps, the first interval from step 1 (after compiling).
  seconds, previous = 0.0, 1
  for row in rates:
    seconds += (row["step"] - previous) / row["steps_per_sec"]
    previous = row["step"]
  lines = console.splitlines()
  return {"steps_per_sec": round((previous - 1) / seconds, 2), "wall_s": round(wall, 1),
          "named_unreadable": sum("Skipping unreadable image" in line for line in lines),
          "libjpeg_lines": sum(line.startswith(stderr_filter.LIBJPEG_MESSAGES)
                               for line in lines)}


def main() -> None:
  """Measures both copies and prints one JSON line each, then the ratio."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
  parser.add_argument("--folder", required=True, help="An image folder PATH/<class>/<image>.")
  parser.add_argument("--fraction", type=float, default=0.1, help="Share of JPEGs rotted.")
  parser.add_argument("--steps", type=int, default=150)
  parser.add_argument("--log_every", type=int, default=25)
  parser.add_argument("--scratch", default="/tmp/bad_images_rate",
                      help="Where the copies and workdirs go (deleted first).")
  args = parser.parse_args()
  if not os.path.isdir(args.folder):
    raise UserError(f"--folder={args.folder} is not a folder; give PATH/<class>/<image>.")
  shutil.rmtree(args.scratch, ignore_errors=True)
  results = {}
  for name in ("intact", "rotten"):
    copy = shutil.copytree(args.folder, os.path.join(args.scratch, name))
    rotted = make_rotten(copy, args.fraction) if name == "rotten" else 0
    print(f"training {args.steps} steps on the {name} copy ({rotted} rotten files) ...",
          flush=True)
    results[name] = dict(train(copy, os.path.join(args.scratch, f"workdir_{name}"), args.steps,
                               args.log_every), copy=name, rotten_files=rotted)
    print(json.dumps(results[name]), flush=True)
  ratio = results["rotten"]["steps_per_sec"] / results["intact"]["steps_per_sec"]
  print(f"ratio rotten / intact: {ratio:.2f}")


if __name__ == "__main__":
  cli.run_tool(main)
