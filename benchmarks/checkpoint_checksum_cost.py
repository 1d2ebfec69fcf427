r"""What the checkpoint checksums cost: milliseconds added per save and per restore.

  python benchmarks/checkpoint_checksum_cost.py \
      [--configs=configs/cifar10.py,configs/imagenet.py] [--reps=5] [--classes=10,1000]

For each config, builds the pretraining state's tree (recipe.build_training and
train.abstract_train_state: the real shapes, with random values, nothing
compiled), then times, interleaved over ``reps`` repetitions (medians):
  * checksums.record on it (what storage.save adds), with the
    module's threads and with one;
  * checksums.verify on the restored tree (what a restore adds);
  * a whole synchronous storage.save and storage.restore, for scale.
Prints one JSON line per config.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mixsiam_jax.run import cli  # noqa: E402  pylint: disable=g-import-not-at-top  (light)


def _timed(fn):
  """(seconds, result) of one call."""
  start = time.perf_counter()
  result = fn()
  return time.perf_counter() - start, result


def _random_state(abstract, seed):
  """Arrays of ``abstract``'s shapes, dtypes and shardings: normal floats, zero integers."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)

  def fill(leaf):
    if np.issubdtype(leaf.dtype, np.floating):
      value = rng.standard_normal(leaf.shape, np.float32).astype(leaf.dtype)
    else:
      value = np.zeros(leaf.shape, leaf.dtype)
    return jax.device_put(value, leaf.sharding)

  return jax.tree.map(fill, abstract)


def measure(config_path: str, num_classes: int, reps: int) -> dict:
  """The medians (ms) for one config's state; see the module docstring."""
  # pylint: disable=g-import-not-at-top,protected-access
  import jax
  from ml_collections import config_flags
  from mixsiam_jax.checkpoints import storage, checksums
  from mixsiam_jax.options import programs
  from mixsiam_jax import recipe, sharding, train

  path, _, variant = config_path.partition(":")
  module = config_flags.config_flags._LoadConfigModule("bench_config", path)
  opts = programs.pretrain_options(module.get_config(variant))
  mesh = sharding.create_mesh()
  training = recipe.build_training(opts, mesh, num_examples=100 * opts.batch_size,
                                   num_classes=num_classes)
  abstract = train.abstract_train_state(training.network, training.tx,
                                        image_size=opts.image_size, mesh=mesh)
  tree = storage.state_tree(_random_state(abstract, 0), jax.random.key(0))
  leaves = jax.tree.leaves(tree)
  times = {k: [] for k in ("record", "record_1_thread", "verify", "save", "restore")}
  threads = checksums._THREADS
  with tempfile.TemporaryDirectory() as directory:
    manager = storage.create_manager(directory, async_save=False, keep=1)
    for rep in range(reps):
      seconds, recorded = _timed(lambda: checksums.record(tree))
      times["record"].append(seconds)
      checksums._THREADS = 1
      times["record_1_thread"].append(_timed(lambda: checksums.record(tree))[0])
      checksums._THREADS = threads
      times["save"].append(_timed(lambda: storage.save(manager, rep + 1, tree, {}))[0])
      seconds, (restored, _) = _timed(lambda: storage.restore(manager, rep + 1, tree))
      times["restore"].append(seconds)
      seconds, verified = _timed(lambda: checksums.verify(restored, recorded))
      assert verified == len(leaves), (verified, len(leaves))
      times["verify"].append(seconds)
    manager.close()
  return {"config": config_path, "arrays": len(leaves),
          "state_mib": round(sum(x.nbytes for x in leaves) / 2**20, 1), "threads": threads,
          **{f"{k}_ms": round(1e3 * statistics.median(v), 1) for k, v in times.items()}}


def main() -> None:
  """Parses the flags, measures each config, prints one JSON line per config."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
  parser.add_argument("--configs", default="configs/cifar10.py,configs/imagenet.py")
  parser.add_argument("--classes", default="10,1000",
                      help="classes of each config's data (the online probe's output)")
  parser.add_argument("--reps", type=int, default=5)
  args = parser.parse_args()
  cli.start_jax()
  for config_path, classes in zip(args.configs.split(","), args.classes.split(",")):
    print(json.dumps(measure(config_path, int(classes), args.reps)), flush=True)


if __name__ == "__main__":
  main()
