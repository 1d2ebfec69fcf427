r"""The whole pretraining program on this host, as a user runs it, against its bare step.

  python benchmarks/end_to_end_check.py --data=/data/cifar10/train --out=/tmp/e2e     # a GPU host
  python benchmarks/end_to_end_check.py --data=PATH --out=/tmp/e2e --smoke           # any CPU

--data is a CIFAR-10 training folder, DIR/train with DIR/train/<class>/<image>
(JPEG or PNG; for example OUT/data/train, the PNG folder scripts/cifar10_study.py
exports from TFDS): images [:4500] of every class train, [4500:] are the kNN
monitor's held-out queries. Four parts, each in its own process, the report rewritten
after each (OUT/end_to_end.json, and a table on stdout):
  bare     benchmarks/accelerator_check.py's CIFAR recipe: the step alone on
           synthetic batches already on the device (images/s);
  input    the training input pipeline alone on this host's cores, as the
           program builds it (images/s, and per core);
  program  main.py with configs/cifar10.py on the folder, for --epochs epochs
           and then SIGTERM: steps/s of the whole program (tf.data, prefetch to
           the device, online probe, metrics, checkpoints every epoch, the kNN
           monitor every epoch), time per epoch, kNN top-1, the peak memory of
           the GPU (nvidia-smi) and of the process, SIGTERM to exit;
  save     one checkpoint write of the program's state (restored, then saved
           and waited for).
program / bare is the fraction of the device's step rate the whole program
reaches: near 1 the GPU is kept fed, well below it the run is input-bound (the
input row says whether the host's cores are why). --smoke runs the same parts
with configs/cifar10.py:tiny on a small slice, to check the script on a CPU.
"""
import argparse
import dataclasses
import json
import os
import pathlib
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from configs import cifar10  # noqa: E402  pylint: disable=g-import-not-at-top
from mixsiam_jax.options import programs
from mixsiam_jax.run import cli  # noqa: E402  pylint: disable=g-import-not-at-top
from mixsiam_jax.workdir import metrics_file  # noqa: E402  pylint: disable=g-import-not-at-top


def _train_split(args) -> str:
  """The images of every class that train; the rest of each class are the kNN queries."""
  return "[:15]" if args.smoke else "[:4500]"


def _config_args(args) -> list:
  """main.py's flags for the checked run (the README's CIFAR-10 command on the folder).

  bfloat16 like the bare step (benchmarks/accelerator_check.py sets half_precision), so
  program / bare compares the same arithmetic on every platform.
  """
  data = os.path.abspath(args.data)
  config = "configs/cifar10.py:tiny" if args.smoke else "configs/cifar10.py"
  held_out = "[15:20]" if args.smoke else "[4500:]"
  return [f"--config={config}", f"--config.dataset=folder:{data}",
          f"--config.train_split={_train_split(args)}", f"--config.eval_dataset=folder:{data}",
          f"--config.eval_split={held_out}", "--config.half_precision=true"]


def _num_examples(args) -> int:
  # Deferred: imports TensorFlow (quietly), which the --part=save child does not need.
  cli.import_tensorflow()
  from mixsiam_jax.data import sources  # pylint: disable=g-import-not-at-top
  return sources.get_dataset_info(f"folder:{os.path.abspath(args.data)}",
                                  _train_split(args)).num_examples


def bare(args, out: pathlib.Path) -> dict:
  """The CIFAR recipe's step alone (benchmarks/accelerator_check.py)."""
  report = out / "accelerator_check.json"
  cmd = [sys.executable, str(REPO / "benchmarks" / "accelerator_check.py"),
         "--only=cifar_resnet18", f"--out={report}"] + (["--smoke", "--steps=3"] if args.smoke
                                                        else [])
  subprocess.run(cmd, check=True, timeout=args.part_seconds, cwd=REPO)
  recipe = json.loads(report.read_text())["recipes"]["cifar_resnet18"]
  return {k: recipe.get(k) for k in ("images_per_second", "step_seconds", "memory",
                                     "fraction_of_peak", "error")} | {
      "device": json.loads(report.read_text()).get("device_kind")}


def input_pipeline(args, opts: programs.PretrainOptions) -> dict:
  """Images/s of the training stream alone (host cores only; no JAX step)."""
  os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
  # In the --part=input child only, once CUDA_VISIBLE_DEVICES hides the GPU from it.
  cli.import_tensorflow()
  from mixsiam_jax import pretrain  # pylint: disable=g-import-not-at-top
  from mixsiam_jax.data import iterate, pipeline  # pylint: disable=g-import-not-at-top
  data = dataclasses.replace(opts.data, dataset=f"folder:{os.path.abspath(args.data)}",
                             split=_train_split(args))
  options = pretrain.train_data_options(dataclasses.replace(opts, data=data), opts.batch_size)
  stream = iterate.numpy_batches(
      lambda start, checked: pipeline.create_pretrain_dataset(
          options, start_step=start, process_index=0, process_count=1,
          checked_decoding=checked), name="the input check")
  try:
    for _ in range(args.input_warmup):
      next(stream)
    start = time.perf_counter()
    for _ in range(args.input_batches):
      next(stream)
    seconds = time.perf_counter() - start
  finally:
    stream.close()
  cores = len(os.sched_getaffinity(0))
  rate = args.input_batches * opts.batch_size / seconds
  return {"images_per_second": rate, "cores": cores, "images_per_second_per_core": rate / cores,
          "batch_size": opts.batch_size, "batches": args.input_batches}


class _Peaks:
  """Polls the peak GPU memory (nvidia-smi) and the process's peak resident memory."""

  def __init__(self, pid: int):
    self.pid, self.gpu_mib, self.host_kib = pid, None, None
    self.has_smi = shutil.which("nvidia-smi") is not None

  def poll(self):
    if self.has_smi:
      try:
        used = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,"
                               "nounits"], capture_output=True, text=True, timeout=5).stdout
        value = max(int(v) for v in used.split())
        self.gpu_mib = max(self.gpu_mib or 0, value)
      except (OSError, ValueError, subprocess.SubprocessError):
        pass
    try:
      for line in pathlib.Path(f"/proc/{self.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
          self.host_kib = max(self.host_kib or 0, int(line.split()[1]))
    except (OSError, ValueError):
      pass


def program(args, out: pathlib.Path, steps_per_epoch: int) -> dict:
  """main.py for --epochs epochs (kNN and a checkpoint each), then SIGTERM."""
  workdir = out / "run"
  shutil.rmtree(workdir, ignore_errors=True)
  cmd = [sys.executable, "main.py", *_config_args(args), f"--workdir={workdir}",
         f"--config.num_train_steps={steps_per_epoch * (args.epochs + 100)}",
         f"--config.log_every_steps={max(1, steps_per_epoch // 4)}",
         f"--config.checkpoint_every_steps={steps_per_epoch}",
         f"--config.eval_every_steps={steps_per_epoch}"]
  with open(out / "program.log", "w") as log:
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    peaks, stop_at = _Peaks(proc.pid), steps_per_epoch * args.epochs
    rows = []
    while time.monotonic() - started < args.part_seconds:
      peaks.poll()
      rows = metrics_file.read_metrics(str(workdir)) if workdir.exists() else []
      if any(r["step"] >= stop_at and "knn_top1" in r for r in rows) or proc.poll() is not None:
        break
      time.sleep(1.0)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
      status = proc.wait(timeout=max(60, args.part_seconds - (signalled - started)))
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()
      status = "killed: no exit within the part's time after SIGTERM"
  exit_seconds = time.monotonic() - signalled
  rates = [r["steps_per_sec"] for r in rows if "steps_per_sec" in r][1:]  # first: after compile
  knn = [r for r in rows if "knn_top1" in r]
  steps_per_second = statistics.median(rates) if rates else None
  return {"exit_status": status, "sigterm_to_exit_seconds": exit_seconds,
          "steps_per_second": steps_per_second, "steps_per_epoch": steps_per_epoch,
          "epoch_seconds": steps_per_epoch / steps_per_second if steps_per_second else None,
          "wall_seconds": signalled - started, "epochs": args.epochs,
          "knn_top1": knn[-1]["knn_top1"] if knn else None,
          "knn_step": knn[-1]["step"] if knn else None,
          "gpu_peak_mib": peaks.gpu_mib, "host_peak_rss_mib": (peaks.host_kib or 0) / 1024,
          "command": " ".join(cmd[1:]), "log": str(out / "program.log")}


def save(args, out: pathlib.Path) -> dict:
  """Seconds to write (and wait for) one checkpoint of the program's newest state."""
  # In the --part=save child only: the parent never starts a JAX backend.
  import jax  # pylint: disable=g-import-not-at-top
  from mixsiam_jax import sharding  # pylint: disable=g-import-not-at-top
  from mixsiam_jax.checkpoints import reader, storage
  cli.start_jax()
  items = ("step", "params", "batch_stats", "opt_state", "rng")
  tree, meta, step = reader.restore_replicated(
      str(out / "run"), sharding.create_mesh(jax.devices()[:1]), items=items)
  with tempfile.TemporaryDirectory(dir=out) as target:
    manager = storage.create_manager(target, async_save=True)
    start = time.perf_counter()
    storage.save(manager, step, tree, meta)
    storage.wait_until_saved(manager, step)
    seconds = time.perf_counter() - start
    manager.close()
  size = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))
  return {"seconds": seconds, "state_mib": size / 2**20, "step": step}


def _table(report: dict) -> str:
  def fmt(value, spec=".3g"):
    return "-" if value is None else format(value, spec) if isinstance(value, float) else str(value)
  b, i, p, s = (report.get(k, {}) for k in ("bare", "input", "program", "save"))
  batch = report.get("batch_size")
  program_rate = p.get("steps_per_second") and p["steps_per_second"] * batch
  lines = [
      f"bare step                    {fmt(b.get('images_per_second'))} img/s",
      f"whole program                {fmt(program_rate)} img/s "
      f"({fmt(program_rate / b['images_per_second'] if program_rate and b.get('images_per_second') else None)}"
      " of the bare step)",
      f"input pipeline alone         {fmt(i.get('images_per_second'))} img/s "
      f"({fmt(i.get('images_per_second_per_core'))} per core, {fmt(i.get('cores'))} cores)",
      f"time per epoch               {fmt(p.get('epoch_seconds'))} s "
      f"({fmt(p.get('steps_per_epoch'))} steps)",
      f"kNN top-1 (held out)         {fmt(p.get('knn_top1'))} % at step {fmt(p.get('knn_step'))}",
      f"GPU / host peak memory       {fmt(p.get('gpu_peak_mib'))} MiB / "
      f"{fmt(p.get('host_peak_rss_mib'))} MiB",
      f"checkpoint write             {fmt(s.get('seconds'))} s ({fmt(s.get('state_mib'))} MiB)",
      f"SIGTERM to exit              {fmt(p.get('sigterm_to_exit_seconds'))} s "
      f"(exit status {fmt(p.get('exit_status'))})"]
  return "\n".join(lines)


def main():
  """Runs the four parts (or, with --part, one of them in a child) and writes the report."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", required=True, help="CIFAR-10 training folder PATH/<class>/<image>")
  parser.add_argument("--out", required=True, help="directory for the report, the run and logs")
  parser.add_argument("--epochs", type=int, default=3)
  parser.add_argument("--smoke", action="store_true", help="tiny config on a slice: any CPU")
  parser.add_argument("--input_batches", type=int, default=50)
  parser.add_argument("--input_warmup", type=int, default=10)
  parser.add_argument("--part_seconds", type=float, default=240, help="limit of each part")
  parser.add_argument("--part", help=argparse.SUPPRESS)  # a child process's one part
  args = parser.parse_args()
  if args.smoke:
    args.epochs, args.input_batches, args.input_warmup = 1, 5, 2
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  opts = programs.pretrain_options(cifar10.get_config("tiny" if args.smoke else ""))
  if args.part == "input":
    print(json.dumps(input_pipeline(args, opts)))
    return
  if args.part == "save":
    print(json.dumps(save(args, out)))
    return
  path = out / "end_to_end.json"
  report = {"date": time.strftime("%Y-%m-%d"), "smoke": args.smoke,
            "batch_size": opts.batch_size, "image_size": opts.image_size}

  def child(part):  # Each in its own process: its own memory, and no JAX backend held here.
    done = subprocess.run([sys.executable, __file__, f"--part={part}", *sys.argv[1:]],
                          capture_output=True, text=True, timeout=args.part_seconds, cwd=REPO)
    if done.returncode:
      return {"error": f"status {done.returncode}: {cli.last_error_line(done.stderr)}"}
    return json.loads(done.stdout.strip().splitlines()[-1])

  steps_per_epoch = _num_examples(args) // opts.batch_size
  for name, run in (("bare", lambda: bare(args, out)), ("input", lambda: child("input")),
                    ("program", lambda: program(args, out, steps_per_epoch)),
                    ("save", lambda: child("save"))):
    try:
      report[name] = run()
    except Exception as e:  # pylint: disable=broad-except  (reported; the other parts go on)
      report[name] = {"error": f"{type(e).__name__}: {e}"}
    path.write_text(json.dumps(report, indent=1))
  print(_table(report))
  print(f"report: {path}")


if __name__ == "__main__":
  cli.run_tool(main)
