r"""Milliseconds of one 3x3 convolution's forward and backward passes: XLA, per-tap matmul, torch.

  python benchmarks/conv_bench.py                        # batch 384, the four CIFAR ResNet stages
  python benchmarks/conv_bench.py --batch_size=96 --passes=fwd,fwd_bwd,dx,dw
  taskset -c 0 python benchmarks/conv_bench.py --threads=1 --impls=xla --passes=dx,dw

One stride-1, padding-1 convolution with C input and C output channels on an
[N, H, H, C] input, for each --layers entry HxC, timed in these passes:
  fwd      the output;
  fwd_bwd  the output and both gradients (input and weights), as a train step needs;
  dx       the input gradient alone;
  dw       the weight gradient alone.
Implementations (--impls):
  xla      ``lax.conv_general_dilated`` (NHWC/HWIO) and its XLA gradients;
  matmul   ``models.conv.conv_matmul_weight_grad``: XLA's forward and input gradient,
           the weight gradient as one matmul per kernel tap (``model.conv_impl`` on CPU);
  torch    ``torch.nn.functional.conv2d`` (NCHW) with ``torch.set_num_threads(--threads)``,
           in a child interpreter (--torch_python, default this one) so that torch stays
           out of the project's dependencies; skipped with a message when torch is missing.
Each figure is the median over --repeats calls after one untimed call (JAX: after
compiling). JAX runs with XLA's own intra-op threads (one per core); pin the
process (taskset) to compare core counts. Run by hand, never as a timed test.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

PASSES = ("fwd", "fwd_bwd", "dx", "dw")
IMPLS = ("xla", "matmul", "torch")


def _layers(text: str):
  """'32x32,16x64' -> [(32, 32), (16, 64)] as (H, C)."""
  return [tuple(int(v) for v in item.split("x")) for item in text.split(",") if item]


def _median_ms(fn, repeats: int) -> float:
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(1000.0 * (time.perf_counter() - start))
  return statistics.median(times)


def jax_times(args, impl: str) -> dict:
  """{'HxC': {pass: ms}} for one JAX implementation."""
  # Never in the torch worker, whose interpreter (--torch_python) may lack JAX.
  import jax  # pylint: disable=g-import-not-at-top
  from jax import lax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from mixsiam_jax.models import conv  # pylint: disable=g-import-not-at-top

  conv_fn = lax.conv_general_dilated if impl == "xla" else conv.conv_matmul_weight_grad
  dims = ("NHWC", "HWIO", "NHWC")

  def forward(x, w):
    return conv_fn(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dims)

  def loss(x, w, g):
    return jnp.vdot(forward(x, w), g)  # its gradients are the VJPs of the output gradient g

  fns = {"fwd": jax.jit(forward),
         "fwd_bwd": jax.jit(jax.value_and_grad(loss, argnums=(0, 1))),
         "dx": jax.jit(jax.grad(loss, argnums=0)),
         "dw": jax.jit(jax.grad(loss, argnums=1))}
  out = {}
  for height, channels in _layers(args.layers):
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (args.batch_size, height, height, channels))
    w = jax.random.normal(keys[1], (3, 3, channels, channels)) * 0.1
    g = jax.random.normal(keys[2], (args.batch_size, height, height, channels))
    row = {}
    for name in args.passes:
      fn = fns[name]
      call = (lambda fn=fn: jax.block_until_ready(fn(x, w))) if name == "fwd" else (
          lambda fn=fn: jax.block_until_ready(fn(x, w, g)))
      row[name] = _median_ms(call, args.repeats)
    out[f"{height}x{channels}"] = row
  return out


def torch_times(args) -> dict:
  """{'HxC': {pass: ms}} for torch.nn.functional.conv2d (run in the child interpreter)."""
  # torch is optional: imported in the torch worker only.
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(args.threads)
  gen = torch.Generator().manual_seed(0)
  out = {}
  for height, channels in _layers(args.layers):
    x0 = torch.randn(args.batch_size, channels, height, height, generator=gen)
    w0 = torch.randn(channels, channels, 3, 3, generator=gen) * 0.1
    g = torch.randn(args.batch_size, channels, height, height, generator=gen)

    def run(name, x0=x0, w0=w0, g=g):
      x = x0.detach().requires_grad_(name in ("fwd_bwd", "dx"))
      w = w0.detach().requires_grad_(name in ("fwd_bwd", "dw"))
      if name == "fwd":
        with torch.no_grad():
          F.conv2d(x, w, padding=1)
        return
      F.conv2d(x, w, padding=1).backward(g)

    out[f"{height}x{channels}"] = {name: _median_ms(lambda name=name: run(name), args.repeats)
                                   for name in args.passes}
  return out


def run_torch(args) -> dict:
  """Runs torch_times in --torch_python; {'error': message} when that fails."""
  cmd = [args.torch_python, os.path.abspath(__file__), "--torch_worker", *args.argv]
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    lines = proc.stderr.strip().splitlines()
    return {"error": lines[-1] if lines else f"exit code {proc.returncode}"}
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
  """Parses the flags, times every implementation, prints one table per pass."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch_size", type=int, default=384, help="N (e.g. 128 images x 3 views)")
  parser.add_argument("--layers", default="32x32,16x64,8x128,4x256", help="HxC entries")
  parser.add_argument("--passes", default="fwd_bwd", help=f"subset of {PASSES}")
  parser.add_argument("--impls", default=",".join(IMPLS), help=f"subset of {IMPLS}")
  parser.add_argument("--repeats", type=int, default=5, help="timed calls; figures are medians")
  parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
  parser.add_argument("--torch_python", default=sys.executable,
                      help="interpreter with torch for the torch column (default: this one)")
  parser.add_argument("--torch_worker", action="store_true", help=argparse.SUPPRESS)
  argv = sys.argv[1:] if argv is None else argv
  args = parser.parse_args(argv)
  args.argv = [a for a in argv if a != "--torch_worker"]
  args.passes = [p for p in args.passes.split(",") if p]
  impls = [i for i in args.impls.split(",") if i]
  if set(args.passes) - set(PASSES) or set(impls) - set(IMPLS):
    parser.error(f"--passes must be a subset of {PASSES} and --impls of {IMPLS}")
  if args.torch_worker:
    print(json.dumps(torch_times(args)))
    return

  # Never in the torch worker, whose interpreter (--torch_python) may lack JAX.
  import jax  # pylint: disable=g-import-not-at-top
  from mixsiam_jax.run import cli  # pylint: disable=g-import-not-at-top
  cli.start_jax()
  print(f"backend={jax.default_backend()} cores={os.cpu_count()} "
        f"affinity={len(os.sched_getaffinity(0))} jax={jax.__version__} batch={args.batch_size} "
        f"repeats={args.repeats} load {os.getloadavg()[0]:.2f}", flush=True)
  results = {}
  for impl in impls:
    if impl == "torch":
      res = run_torch(args)
      if "error" in res:
        print(f"torch column skipped: {res['error']}")
        continue
      results[impl] = res
    else:
      results[impl] = jax_times(args, impl)
  print(f"load after: {os.getloadavg()[0]:.2f}")
  for name in args.passes:
    print(f"\n{name}, ms (median of {args.repeats})")
    print(f"{'layer HxC':<12}" + "".join(f"{impl:>10}" for impl in results))
    for layer in results[next(iter(results))]:
      print(f"{layer:<12}" + "".join(f"{results[i][layer][name]:>10.0f}" for i in results))


if __name__ == "__main__":
  if "--torch_worker" in sys.argv:  # In --torch_python, which may lack absl and JAX.
    main()
  else:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from mixsiam_jax.run import cli  # pylint: disable=g-import-not-at-top
    cli.run_tool(main)
