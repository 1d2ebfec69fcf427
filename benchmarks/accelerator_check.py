r"""Measure the pretraining step on this machine's accelerators next to its compile plan.

  python benchmarks/accelerator_check.py --out=accelerator_check.json   # via accelerator_check.sh

For each recipe: the compile plan of the real step for these devices
(mixsiam_jax.compile_plan.plan, topology 'local'), then the step itself on
synthetic uint8 views already on the devices (so the input pipeline is not
measured): images/s, model FLOP/s as a fraction of the chip's bf16 peak, and the
allocator's peak memory against the plan's prediction. Recipes:
  resnet50_224: configs/imagenet.py, bf16, --per_device_batch per device.
  cifar_resnet18: configs/cifar10.py, batch 512, 32 px; also the time of one
    epoch of CIFAR-10 (50000 // 512 steps) at the measured step time.
"""
import argparse
import json
import pathlib
import sys
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
# pylint: disable=g-import-not-at-top,wrong-import-position
from configs import cifar10, imagenet  # noqa: E402
from mixsiam_jax import compile_plan, sharding, topologies, train  # noqa: E402

CIFAR10_TRAIN = 50000


def _peak_bytes() -> int:
  """The allocator's peak bytes in use on the first device (0 if not reported)."""
  stats = jax.local_devices()[0].memory_stats() or {}
  return int(stats.get("peak_bytes_in_use", 0))


def measure(config, topology, steps: int, warmup: int) -> dict:
  """Plan, then run ``steps`` timed steps after ``warmup`` on synthetic data."""
  plan, built, compiled = compile_plan.plan_and_compile(config, topology)
  if compiled is None:
    return {"plan": plan}
  mesh = sharding.create_mesh(topology.devices)
  _, batch_shapes, _ = built.args
  init_rng, step_rng = jax.random.split(jax.random.key(0))
  step_rng = sharding.replicated_key(step_rng, mesh)
  state = train.create_train_state(init_rng, built.network, built.tx,
                                   image_size=config.image_size, mesh=mesh)
  rng = np.random.default_rng(0)
  batch = {k: rng.integers(0, 255 if k == "views" else 10, size=v.shape).astype(v.dtype)
           for k, v in batch_shapes.items()}
  batch = sharding.global_batch(batch, mesh)
  start = time.perf_counter()
  for _ in range(warmup):
    state, metrics = compiled(state, batch, step_rng)
  jax.block_until_ready(metrics)
  warmup_seconds = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, batch, step_rng)
  jax.block_until_ready((state, metrics))
  seconds = (time.perf_counter() - start) / steps
  out = {"plan": plan, "step_seconds": seconds, "warmup_seconds": warmup_seconds,
         "images_per_second": config.batch_size / seconds,
         "loss_finite": bool(np.isfinite(float(metrics["loss"]))),
         "measured_peak_bytes": _peak_bytes(),
         "predicted_total_bytes": plan["memory"]["total"]}
  if plan["flops"]["per_device"] and topology.chip:
    out["fraction_of_peak"] = plan["flops"]["per_device"] / seconds / topology.chip.peak_bf16_flops
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="accelerator_check.json")
  parser.add_argument("--per_device_batch", type=int, default=128)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--smoke", action="store_true",
                      help="tiny configs instead of the recipes: checks this script on a CPU")
  args = parser.parse_args()
  topology = topologies.devices_for("local")
  report = {"devices": len(topology.devices), "device_kind": topology.devices[0].device_kind,
            "jax": jax.__version__, "date": time.strftime("%Y-%m-%d")}
  big = cifar10.get_config("tiny") if args.smoke else imagenet.get_config()
  big.batch_size = args.per_device_batch * len(topology.devices)
  big.half_precision = True
  report["resnet50_224"] = measure(big, topology, args.steps, args.warmup)
  print(json.dumps({k: v for k, v in report["resnet50_224"].items() if k != "plan"}), flush=True)
  small = cifar10.get_config("tiny" if args.smoke else "")
  small.half_precision = True
  result = measure(small, topology, 2 * args.steps, args.warmup)
  if "step_seconds" in result:
    result["epoch_seconds"] = CIFAR10_TRAIN // small.batch_size * result["step_seconds"]
    result["epoch_note"] = "steps of one CIFAR-10 epoch at the measured step time; no input pipeline"
  report["cifar_resnet18"] = result
  print(json.dumps({k: v for k, v in result.items() if k != "plan"}), flush=True)
  pathlib.Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
  main()
