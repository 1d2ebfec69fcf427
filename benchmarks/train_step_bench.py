r"""Images/s of our jitted MixSiam train step vs a plain Flax network and PyTorch (eager, compiled).

One command (CPU; the defaults finish in a few minutes on 2 cores):

  python benchmarks/train_step_bench.py

Bigger runs, e.g. batch 128 on a CPU and ResNet-50 at 224 px on a GPU:

  python benchmarks/train_step_bench.py --width=32 --batch_size=128
  python benchmarks/train_step_bench.py --depth=50 --width=64 --image_size=224 \
      --batch_size=128 --dtype=bfloat16 --steps=20 --repeats=5      # on a GPU

Rows (one image = three views: x1, x2 and the mixed view, fwd + bwd + update):
  * ours: train.make_train_step + train.jit_train_step (donated state, metrics
    computed on device, never fetched in the loop), views uploaded as uint8 and
    normalised/mixed inside the step, photometric augmentation off;
  * ours_photo: the same with photometric.device_photometric_augment
    (colour jitter p=0.8, grayscale 0.2; blur 0.5 at >= 96 px) inside the step;
  * flax_plain: the same step (train.make_train_step, jit_train_step, loss,
    optimiser) around a network of the same depth, width, stem and heads built
    from stock flax.linen layers only (nn.Conv, nn.Dense, nn.BatchNorm with its
    defaults, --dtype compute), the three views as one batch with shared
    BatchNorm statistics. It is not MixSiam (no per-view statistics, bf16 weight
    gradients); it is what XLA makes of a plain network of the same size: the
    bound our step should reach;
  * bare: the same Flax network and loss as ours under a plain
    jax.jit(value_and_grad + optax SGD update), no metrics, no donation, views
    precomputed on device (a lower bound on what any JAX step can cost);
  * torch: a PyTorch model of the same network (benchmarks/torch_reference.py:
    torchvision layout, CIFAR or ImageNet stem, width knob, BN per view by running
    the encoder once per view, 2-/3-layer projector, predictor), the same loss, torch.optim.SGD
    (momentum 0.9, weight decay), torch.set_num_threads(--threads). It runs in a
    child interpreter (--torch_python, default this one) so that torch stays out
    of the project's dependencies and its memory is measured on its own; it is
    skipped with a message when torch is missing;
  * torch_compile: the torch row with the encoder and the predictor under
    torch.compile (default mode; forward and backward compiled, compilation
    happens in the warm-up steps), skipped with a message where torch or its
    compiler is missing.
The rows run in the same order in each of --repeats rounds (interleaved); each
figure is the median over rounds of --steps timed steps, as images/s and views/s
(3 views per image). Then: compile time, peak host memory (getrusage max RSS) and
device memory (memory_stats where the backend reports it; XLA's memory analysis of
the compiled step otherwise), our overhead over the bare step, and last the ratios
ours / flax_plain (the bound) and ours / torch_compile (and the other torch rows).

--xla_flags appends to XLA_FLAGS before jax is imported (for trying XLA:CPU
options); --rows picks a subset of rows. Run by hand, never as a timed test.
The JAX rows are built in benchmarks/train_step_jax_rows.py, the torch model in
benchmarks/torch_reference.py; this file holds the flags, the torch workers, the
timing rounds and the report.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch_reference  # the sibling modules (this script's folder is on sys.path)
from train_step_jax_rows import build_jax

ROWS = ("ours", "ours_photo", "flax_plain", "bare", "torch", "torch_compile")
TORCH_ROWS = ("torch", "torch_compile")
VIEWS_PER_IMAGE = 3


def run_torch(args, python: str, compiled: bool = False) -> dict:
  """Runs the torch row (``compiled``: torch_compile) in ``python``; {'error': message} on failure."""
  cmd = ([python, os.path.abspath(__file__), "--torch_worker"] + args.argv
         + (["--torch_compile"] if compiled else []))
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
  return json.loads(proc.stdout.strip().splitlines()[-1])


def torch_compile_worker(args) -> dict:
  """torch_reference.torch_worker with the encoder and predictor under torch.compile.

  Runs in the child interpreter only: it swaps torch_reference.build_model for one
  that wraps both modules in torch.compile (default mode), so the step, loss,
  optimiser and timing are the torch row's own.
  """
  # In the torch worker only: torch is optional.
  import torch  # pylint: disable=g-import-not-at-top

  plain_build = torch_reference.build_model

  def build_compiled(a):
    model = plain_build(a)
    for name in ("encoder", "predictor"):
      model[name] = torch.compile(model[name])
    return model

  torch_reference.build_model = build_compiled
  return torch_reference.torch_worker(args)


def parse_args(argv):
  """The benchmark's flags; argv without the program name."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--depth", type=int, default=18)
  parser.add_argument("--width", type=int, default=32)
  parser.add_argument("--batch_size", type=int, default=32, help="examples (x3 views) per step")
  parser.add_argument("--image_size", type=int, default=32)
  parser.add_argument("--stem", default="", help="cifar | imagenet (default: cifar up to 64 px)")
  parser.add_argument("--projector_layers", type=int, default=0, help="default 2 cifar, 3 imagenet")
  parser.add_argument("--projector_dim", type=int, default=2048)
  parser.add_argument("--predictor_hidden_dim", type=int, default=512)
  parser.add_argument("--weight_decay", type=float, default=5e-4)
  parser.add_argument("--dtype", default="float32", help="JAX compute dtype; torch autocast if bf16")
  parser.add_argument("--conv_impl", default="auto",
                      help="model.conv_impl of the JAX rows: auto | xla | matmul_weight_grad")
  parser.add_argument("--steps", type=int, default=5, help="timed steps per row per round")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps (torch)")
  parser.add_argument("--repeats", type=int, default=3, help="rounds; figures are medians")
  parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
  parser.add_argument("--rows", default=",".join(ROWS),
                      help=f"subset of {ROWS}, in run order; a row may repeat (ours,bare,ours,bare)")
  parser.add_argument("--torch_python", default=sys.executable,
                      help="interpreter with torch for the torch row (default: this one)")
  parser.add_argument("--torch_device", default="auto", help="auto | cpu | cuda")
  parser.add_argument("--xla_flags", default="", help="appended to XLA_FLAGS")
  parser.add_argument("--json", default="", help="also write the results to this file")
  parser.add_argument("--torch_worker", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--torch_compile", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  args.argv = [a for a in argv if a not in ("--torch_worker", "--torch_compile")]
  args.rows = tuple(r for r in args.rows.split(",") if r)
  if set(args.rows) - set(ROWS):
    parser.error(f"--rows: unknown {sorted(set(args.rows) - set(ROWS))}; choose from {ROWS}")
  return args


def run_rounds(args, built):
  """Times every row --repeats times, interleaved.

  Returns:
    (images/s per row per round, {torch row: its worker's last result}, load averages).
  """
  times = {row: [] for row in args.rows}
  torch_info = {}
  loads = []
  for r in range(args.repeats):
    loads.append(os.getloadavg()[0])
    for row in args.rows:
      if row in TORCH_ROWS:
        res = run_torch(args, args.torch_python, compiled=row == "torch_compile")
        if "error" in res:
          print(f"{row} row skipped: {res['error']}")
          times.pop(row)
          args.rows = tuple(x for x in args.rows if x != row)
          continue
        torch_info[row] = res
        times[row].append(res["images_per_s"])
        continue
      built[row](1)  # untimed: first call after compile, allocator warm-up
      start = time.perf_counter()
      built[row](args.steps)
      times[row].append(args.batch_size * args.steps / (time.perf_counter() - start))
    print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in times.items() if v)
          + f" img/s (load {loads[-1]:.2f})", flush=True)
  return times, torch_info, loads


def report(args, times, info, torch_info, loads, host_rss_after_compile, device_mem):
  """Prints the table, memory, load, overhead and ratios; writes --json."""
  med = {row: statistics.median(v) for row, v in times.items() if v}
  print()
  print(f"{'row':<16}{'images/s':>10}{'views/s':>10}{'compile s':>11}{'XLA temp MiB':>14}"
        "  images/s per round")
  for row in dict.fromkeys(args.rows):  # a row listed twice runs twice per round, prints once
    if row not in med:
      continue
    rounds = " ".join(f"{x:.1f}" for x in times[row])
    compile_s = f"{info[row]['compile_s']:.1f}" if row in info else "-"
    temp = f"{info[row]['memory'].get('temp_mib', float('nan')):.0f}" if row in info else "-"
    print(f"{row:<16}{med[row]:>10.1f}{VIEWS_PER_IMAGE * med[row]:>10.1f}{compile_s:>11}"
          f"{temp:>14}  {rounds}")
  print()
  print(f"peak host RSS, this (JAX) process: {torch_reference.max_rss_mib():.0f} MiB "
        f"({host_rss_after_compile:.0f} after compiling)")
  for row, res in torch_info.items():
    print(f"peak host RSS, {row} process: {res['max_rss_mib']:.0f} MiB "
          f"(torch {res['torch']}, {res['threads']} threads)")
    if "device_peak_mib" in res:
      print(f"{row} device peak: {res['device_peak_mib']:.0f} MiB")
  print(f"JAX device peak: {device_mem:.0f} MiB" if device_mem is not None
        else "JAX device memory_stats: not reported by this backend")
  print(f"load average during rounds: {', '.join(f'{x:.2f}' for x in loads)}")
  if "ours" in med and "bare" in med:
    print(f"our overhead over the bare JAX step: {100 * (med['bare'] / med['ours'] - 1):+.1f}% "
          f"(time per step)")
  # Throughput ratios (> 1: ours is faster); ours / flax_plain is the distance to the bound.
  for row in ("ours", "ours_photo", "bare"):
    for other in ("flax_plain",) + TORCH_ROWS:
      if row in med and other in med and (row == "ours" or other != "flax_plain"):
        print(f"ratio {row} / {other}: {med[row] / med[other]:.2f}x")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"args": {k: v for k, v in vars(args).items() if k != "argv"}, "times": times,
                 "median": med, "views_per_image": VIEWS_PER_IMAGE, "info": info,
                 "torch": torch_info, "loads": loads,
                 "max_rss_mib": torch_reference.max_rss_mib(), "device_peak_mib": device_mem},
                f, indent=1)


def main(argv=None):
  """Runs the benchmark (or, with --torch_worker, the torch row) and prints the results."""
  args = parse_args(sys.argv[1:] if argv is None else argv)
  if args.torch_worker:
    worker = torch_compile_worker if args.torch_compile else torch_reference.torch_worker
    print(json.dumps(worker(args)))
    return

  if args.xla_flags:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
  # After XLA_FLAGS is set; never in the torch worker, whose interpreter may lack JAX.
  import jax  # pylint: disable=g-import-not-at-top
  from mixsiam_jax.run import cli  # pylint: disable=g-import-not-at-top

  backend = cli.start_jax()
  if args.torch_device == "auto":
    args.torch_device = "cpu" if backend == "cpu" else "cuda"
    args.argv.append(f"--torch_device={args.torch_device}")
  if args.dtype == "auto":
    args.dtype = "float32" if backend == "cpu" else "bfloat16"
  print(f"backend={backend} device={jax.devices()[0].device_kind} cores={os.cpu_count()} "
        f"jax={jax.__version__} XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  print(f"ResNet-{args.depth} width {args.width}, {torch_reference.stem(args)} stem, "
        f"{args.image_size} px, batch {args.batch_size} x 3 views, dtype {args.dtype}, "
        f"conv_impl {args.conv_impl}, projector {torch_reference.projector_layers(args)}x"
        f"{args.projector_dim}, predictor {args.predictor_hidden_dim}; "
        f"{args.steps} steps x {args.repeats} rounds; load {os.getloadavg()[0]:.2f}", flush=True)

  built, info = build_jax(args)
  host_rss_after_compile = torch_reference.max_rss_mib()
  times, torch_info, loads = run_rounds(args, built)
  stats = jax.devices()[0].memory_stats()
  device_mem = stats.get("peak_bytes_in_use", 0) / 2**20 if stats else None
  report(args, times, info, torch_info, loads, host_rss_after_compile, device_mem)


if __name__ == "__main__":
  if "--torch_worker" in sys.argv:  # In --torch_python, which may lack absl and JAX.
    main()
  else:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from mixsiam_jax.run import cli  # pylint: disable=g-import-not-at-top
    cli.run_tool(main)
