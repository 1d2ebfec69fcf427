r"""Throughput of the shared loop against the number of steps it lets run ahead.

  python benchmarks/loop_in_flight_bench.py [--config=configs/cifar10.py:tiny] \
      [--in_flight=1,2,1000] [--steps=40] [--reps=3] [--batch_size=64]

Runs the real pretraining step (recipe.build_training on the config) through
loop.train_loop on synthetic uint8 batches already on the devices, for each value of
``steps_in_flight`` (1000 stands for "unbounded"), interleaved over ``reps``
repetitions, and prints steps/s per value (median) as one JSON line: wall time
of the whole loop.train_loop call, after one untimed run that compiles the step.
"""
import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mixsiam_jax.run import cli  # noqa: E402  pylint: disable=g-import-not-at-top  (light)


def main() -> None:
  """Parses the flags, runs the interleaved repetitions, prints one JSON line."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
  parser.add_argument("--config", default="configs/cifar10.py:tiny")
  parser.add_argument("--in_flight", default="1,2,1000")
  parser.add_argument("--steps", type=int, default=40)
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--batch_size", type=int, default=64)
  args = parser.parse_args()

  # Deferred so that --help answers without loading JAX.
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from mixsiam_jax.checkpoints import run_checkpoints  # pylint: disable=g-import-not-at-top
  from mixsiam_jax.run import loop
  from mixsiam_jax.options import programs, shared
  from mixsiam_jax import recipe, sharding, train  # pylint: disable=g-import-not-at-top
  cli.start_jax()

  path, _, variant = args.config.partition(":")
  module = config_flags.config_flags._LoadConfigModule("bench_config", path)  # pylint: disable=protected-access
  opts = dataclasses.replace(programs.pretrain_options(module.get_config(variant)),
                             batch_size=args.batch_size, num_train_steps=args.steps)
  mesh = sharding.create_mesh()
  training = recipe.build_training(opts, mesh, num_examples=args.steps * args.batch_size,
                                   num_classes=0)
  rng = np.random.default_rng(0)
  size = opts.image_size
  batch = sharding.global_batch(
      {"views": rng.integers(0, 256, (args.batch_size, 2, size, size, 3), np.uint8),
       "label": np.zeros(args.batch_size, np.int32)}, mesh)
  key = sharding.replicated_key(jax.random.key(1), mesh)

  class Writer:
    """Discards what the loop logs."""

    def write_scalars(self, step, scalars):
      del step, scalars

    def flush(self):
      pass

    def close(self):
      pass

  results = {k: [] for k in (int(v) for v in args.in_flight.split(","))}
  for rep in range(args.reps + 1):
    for k in results:
      state = train.create_train_state(jax.random.key(0), training.network, training.tx,
                                       image_size=size, mesh=mesh)
      with tempfile.TemporaryDirectory() as tmp:
        checkpoints = run_checkpoints.Checkpoints(
            tmp, shared.CheckpointOptions(keep=3, keep_every_steps=0, async_save=False),
            to_tree=lambda s: {"step": s.step}, from_tree=lambda s, tree: s, meta={})
        writer = Writer()
        start = time.perf_counter()
        loop.train_loop(lambda s, b: training.step(s, b, key), state, iter([batch] * args.steps),
                        start_step=0, num_steps=args.steps,
                        cadence=shared.Cadence(log_every_steps=args.steps,
                                               checkpoint_every_steps=10 * args.steps,
                                               eval_every_steps=0),
                        checkpoints=checkpoints, writer=writer, steps_in_flight=k)
      if rep:  # Repetition 0 compiles.
        results[k].append(args.steps / (time.perf_counter() - start))
  print(json.dumps({"config": args.config, "batch_size": args.batch_size, "steps": args.steps,
                    "devices": jax.device_count(),
                    "steps_per_sec_median": {str(k): statistics.median(v)
                                             for k, v in results.items()},
                    "steps_per_sec_all": {str(k): v for k, v in results.items()}}))


if __name__ == "__main__":
  cli.run_tool(main)
