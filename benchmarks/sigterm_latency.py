r"""Time from SIGTERM (a preemption notice) to a saved checkpoint and exit, on a real run.

  python benchmarks/sigterm_latency.py --workdir=/tmp/sigterm -- \
      --config=configs/cifar10.py:tiny --config.dataset=folder:PATH --config.eval_dataset= \
      --config.model.width=32 --config.image_size=32 --config.batch_size=64 \
      --config.num_train_steps=100000 --config.log_every_steps=5

Starts ``main.py`` with the flags after ``--`` (plus --workdir), waits until
``--after_logs`` lines of training metrics are in metrics.jsonl (the run is in
its steady state), sends SIGTERM, and prints one JSON line: seconds from the
signal to the process's exit, its exit status, the step of the checkpoint it
left, the steps it logged, and the step time (from the last logged steps_per_sec),
so the latency can be read in steps, and the run's peak host memory.
"""
import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from mixsiam_jax.errors import UserError  # noqa: E402  pylint: disable=g-import-not-at-top
from mixsiam_jax.run import cli  # noqa: E402  pylint: disable=g-import-not-at-top  (light)


def _metric_rows(workdir: str):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def main() -> None:
  """Runs one measurement and prints it as JSON."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
  parser.add_argument("--workdir", required=True, help="A fresh workdir (deleted first).")
  parser.add_argument("--after_logs", type=int, default=2,
                      help="Training log lines to wait for before the signal.")
  parser.add_argument("--timeout", type=float, default=3600.0)
  parser.add_argument("main_flags", nargs="*", help="Flags for main.py, after --.")
  args = parser.parse_args()
  shutil.rmtree(args.workdir, ignore_errors=True)
  log = open(args.workdir.rstrip("/") + ".log", "w")
  proc = subprocess.Popen([sys.executable, "main.py", f"--workdir={args.workdir}",
                           *args.main_flags], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
  deadline = time.time() + args.timeout
  while len([r for r in _metric_rows(args.workdir) if "loss" in r]) < args.after_logs:
    if proc.poll() is not None or time.time() > deadline:
      proc.kill()
      log.close()
      with open(log.name, errors="replace") as f:
        cause = cli.last_error_line(f.read())
      raise UserError(f"main.py ended or timed out before {args.after_logs} log lines ({cause}); "
                      f"its log: {log.name}")
    time.sleep(0.2)
  sent = time.time()
  proc.send_signal(signal.SIGTERM)
  status = proc.wait(timeout=args.timeout)
  seconds = time.time() - sent
  rows = [r for r in _metric_rows(args.workdir) if "loss" in r]
  checkpoints = os.path.join(args.workdir, "checkpoints")
  steps = sorted(int(p) for p in os.listdir(checkpoints) if p.isdigit())
  rate = next((r["steps_per_sec"] for r in reversed(rows) if "steps_per_sec" in r), None)
  print(json.dumps({
      "signal_to_exit_s": round(seconds, 2), "exit_status": status,
      "checkpoint_step": steps[-1] if steps else None, "last_logged_step": rows[-1]["step"],
      "step_time_s": round(1.0 / rate, 3) if rate else None,
      "latency_in_steps": round(seconds * rate, 2) if rate else None,
      "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, 2),
      "flags": args.main_flags}))


if __name__ == "__main__":
  cli.run_tool(main)
