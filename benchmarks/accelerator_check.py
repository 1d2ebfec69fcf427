r"""Measure the pretraining step on this machine's accelerators next to its compile plan.

  python benchmarks/accelerator_check.py --out=accelerator_check.json   # via accelerator_check.sh

For each recipe: the compile plan of the real step for these devices
(mixsiam_jax.planning.planner, topology 'local'), then the step itself on synthetic
uint8 views already on the devices (so the input pipeline is not measured):
images/s, model FLOP/s as a fraction of the chip's bf16 peak, and the allocator's
peak memory against the plan's prediction. Each recipe runs in a process of its
own, so that each peak is its own. Recipes, in order:
  cifar_resnet18: configs/cifar10.py, bf16, batch 512, 32 px; also the time of one
    epoch of CIFAR-10 (50000 // 512 steps) at the measured step time.
  resnet50_224: configs/imagenet.py, bf16, --per_device_batch per device.
  resnet50_224_2x, resnet50_224_2x_remat: twice the per-device batch, without and
    with remat; run only while --budget_seconds leaves --optional_seconds.
The report is rewritten after each recipe, so a run cut short keeps what it measured.
Needs JAX for the accelerator, flax, optax and ml-collections; not TensorFlow.
"""
import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from configs import cifar10, imagenet  # noqa: E402  pylint: disable=g-import-not-at-top
from mixsiam_jax.options import programs
from mixsiam_jax.run import cli  # noqa: E402  pylint: disable=g-import-not-at-top

CIFAR10_TRAIN = 50000
# name -> (config module, per-device batch as a multiple of --per_device_batch (None: the
# config's global batch), remat, required).
RECIPES = {
    "cifar_resnet18": ("cifar10", None, False, True),
    "resnet50_224": ("imagenet", 1, False, True),
    "resnet50_224_2x": ("imagenet", 2, False, False),
    "resnet50_224_2x_remat": ("imagenet", 2, True, False),
}


def _peak_bytes(device) -> dict:
  """The allocator's peak so far, in use now and limit on ``device`` (empty where not reported)."""
  stats = device.memory_stats() or {}
  return {k: int(stats[k]) for k in ("peak_bytes_in_use", "bytes_in_use", "bytes_limit")
          if k in stats}


def _timed(compiled, state, batch, rng, steps: int):
  """Runs ``steps`` steps; returns (state, metrics, seconds per step)."""
  # In a recipe's child process only: the parent never starts a JAX backend.
  import jax  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, batch, rng)
  jax.block_until_ready((state, metrics))
  return state, metrics, (time.perf_counter() - start) / steps


def measure(name: str, smoke: bool, per_device_batch: int, steps: int, warmup: int) -> dict:
  """Plans and runs one recipe on this machine's devices; returns its JSON-able report."""
  # In a recipe's child process only: the parent never starts a JAX backend.
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from mixsiam_jax import sharding, train  # pylint: disable=g-import-not-at-top
  from mixsiam_jax.planning import planner, topologies
  module, multiple, remat, _ = RECIPES[name]
  cli.start_jax()
  topology = topologies.devices_for("local")
  if smoke:  # The recipes' structure on a tiny network, for a CPU.
    config = cifar10.get_config("tiny")
  else:
    config = {"imagenet": imagenet, "cifar10": cifar10}[module].get_config()
  if multiple is not None:
    config.batch_size = multiple * per_device_batch * len(topology.devices)
  config.half_precision = True
  config.model.remat = remat
  opts = programs.pretrain_options(config)
  plan, built, compiled = planner.plan_and_compile(opts, topology)
  machine = {"devices": len(topology.devices), "device_kind": topology.devices[0].device_kind,
             "platform": topology.platform, "jax": jax.__version__}
  # The process's peak after each stage: compiling (autotuning), initialising, stepping.
  memory = {"after_compile": _peak_bytes(topology.devices[0])}
  out = {"plan": plan, "machine": machine}
  if compiled is None:
    return out
  mesh = sharding.create_mesh(topology.devices)
  _, batch_shapes, _ = built.args
  init_rng, step_rng = jax.random.split(jax.random.key(0))
  step_rng = sharding.replicated_key(step_rng, mesh)
  state = train.create_train_state(init_rng, built.network, built.tx,
                                   image_size=opts.image_size, mesh=mesh)
  rng = np.random.default_rng(0)
  # Random pixels (not zeros: a product of zeros can run faster than real data).
  batch = {k: rng.integers(0, 256 if k in ("views", "canvas") else 10, size=v.shape).astype(
      v.dtype) for k, v in batch_shapes.items()}
  if "windows" in batch:  # data.resize_on_device: windows inside the canvas (30-100% sides)
    side = batch_shapes["canvas"].shape[1]
    sides = rng.uniform(0.3, 1.0, batch_shapes["windows"].shape[:-1] + (1,)) * side
    batch["windows"] = np.concatenate([0 * sides, 0 * sides, sides, sides], -1).astype(np.float32)
  batch = sharding.global_batch(batch, mesh)
  memory["after_init"] = _peak_bytes(topology.devices[0])
  start = time.perf_counter()
  state, metrics, _ = _timed(compiled, state, batch, step_rng, warmup)
  out["warmup_seconds"] = time.perf_counter() - start
  # Two timed rounds: their difference is the noise of the figure.
  state, metrics, first = _timed(compiled, state, batch, step_rng, steps)
  state, metrics, second = _timed(compiled, state, batch, step_rng, steps)
  seconds = min(first, second)
  out.update(step_seconds=seconds, step_seconds_rounds=[first, second], timed_steps=steps,
             images_per_second=opts.batch_size / seconds,
             loss=float(metrics["loss"]), loss_finite=bool(np.isfinite(float(metrics["loss"]))),
             memory=_peak_bytes(topology.devices[0]), memory_stages=memory,
             predicted_bytes_per_device=plan["memory"]["total"])
  if plan["flops"]["per_device"] and topology.chip:
    out["model_flops_per_second_per_device"] = plan["flops"]["per_device"] / seconds
    out["fraction_of_peak"] = out["model_flops_per_second_per_device"] / (
        topology.chip.peak_bf16_flops)
    out["peak_source"] = topology.chip.source
  if module == "cifar10":
    out["epoch_seconds"] = CIFAR10_TRAIN // opts.batch_size * seconds
    out["epoch_note"] = (f"{CIFAR10_TRAIN // opts.batch_size} steps of batch "
                         f"{opts.batch_size} at the measured step time; no input pipeline")
  return out


def _summary(name: str, result: dict) -> str:
  plan = result.get("plan", {})
  keys = ("step_seconds", "images_per_second", "fraction_of_peak", "loss_finite", "memory",
          "predicted_bytes_per_device", "epoch_seconds", "error")
  return json.dumps({"recipe": name, "status": plan.get("status"),
                     "per_device_batch": plan.get("per_device_batch"),
                     "compile_seconds": plan.get("compile_seconds"),
                     **{k: result[k] for k in keys if k in result}})


def main():
  """Runs every recipe in a child process (or, with --recipe, one recipe) and reports."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="accelerator_check.json")
  parser.add_argument("--per_device_batch", type=int, default=128)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--budget_seconds", type=float, default=450,
                      help="all recipes together; a recipe running past it is stopped")
  parser.add_argument("--optional_seconds", type=float, default=150,
                      help="an optional recipe starts only if this much budget is left")
  parser.add_argument("--only", default=",".join(RECIPES),
                      help="comma-separated recipes to run (default: all, in order)")
  parser.add_argument("--smoke", action="store_true",
                      help="tiny configs instead of the recipes: checks this script on a CPU")
  parser.add_argument("--recipe", help=argparse.SUPPRESS)  # the child process's one recipe
  args = parser.parse_args()
  if args.recipe:
    result = measure(args.recipe, args.smoke, args.per_device_batch, args.steps, args.warmup)
    pathlib.Path(args.out).write_text(json.dumps(result, indent=1))
    return
  # The parent never starts a JAX backend: on a GPU that would hold memory (and a
  # context) that the recipes' processes then lack. The machine is described by the
  # first recipe that reports.
  report = {"date": time.strftime("%Y-%m-%d"), "smoke": args.smoke, "recipes": {}}
  deadline = time.monotonic() + args.budget_seconds
  only = args.only.split(",")
  unknown = sorted(set(only) - set(RECIPES))
  if unknown:
    parser.error(f"--only: unknown recipes {unknown}; known: {list(RECIPES)}")
  for name, (_, _, _, required) in RECIPES.items():
    if name not in only:
      continue
    left = deadline - time.monotonic()
    if left <= 0 or (not required and left < args.optional_seconds):
      report["recipes"][name] = {"skipped": f"{left:.0f} s of the budget left"}
      continue
    with tempfile.NamedTemporaryFile(suffix=".json") as part:
      child = [sys.executable, __file__, f"--recipe={name}", f"--out={part.name}",
               f"--per_device_batch={args.per_device_batch}", f"--steps={args.steps}",
               f"--warmup={args.warmup}"] + (["--smoke"] if args.smoke else [])
      try:
        done = subprocess.run(child, timeout=left, check=False)
        text = pathlib.Path(part.name).read_text()
        result = json.loads(text) if done.returncode == 0 and text else {
            "error": f"exit status {done.returncode} (its output is above)"}
      except subprocess.TimeoutExpired:
        result = {"error": f"stopped at the budget of {args.budget_seconds:.0f} s"}
    for key in ("devices", "device_kind", "platform", "jax"):
      if key in result.get("machine", {}):
        report.setdefault(key, result["machine"][key])
    report["recipes"][name] = result
    pathlib.Path(args.out).write_text(json.dumps(report, indent=1))
    print(_summary(name, result), flush=True)
  pathlib.Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
  cli.run_tool(main)
