"""main.py with one addition for tests/test_reliability.py: a record of the examples each step trains on.

  python tests/reliability_worker.py <main.py flags>

runs exactly main.py's program. When MIXSIAM_EXAMPLE_IDS names a file, every
batch the training loop takes from sharding.prefetch_to_mesh (one per step, in
order) appends a line {"process": i, "ids": [...]} to it: this process's
per-example ids (batch['index']), flushed at once so that a SIGKILL loses
nothing already trained on. Recording at the point of consumption (not when
tf.data produces a batch) means a run's lines are the batches its steps used.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import main as main_program  # noqa: E402  (defines the flags)
from absl import app  # noqa: E402


def _record_example_ids(path):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from mixsiam_jax import sharding  # pylint: disable=g-import-not-at-top
  original = sharding.prefetch_to_mesh

  def recording_prefetch(batches, mesh, size=2):
    pending = []

    def tap():
      for batch in batches:
        pending.append(np.asarray(batch["index"]).tolist())
        yield batch

    with open(path, "a") as f:
      for global_batch in original(tap(), mesh, size):
        f.write(json.dumps({"process": jax.process_index(), "ids": pending.pop(0)}) + "\n")
        f.flush()
        yield global_batch

  sharding.prefetch_to_mesh = recording_prefetch


def run(argv):
  if os.environ.get("MIXSIAM_EXAMPLE_IDS"):
    _record_example_ids(os.environ["MIXSIAM_EXAMPLE_IDS"])
  main_program.main(argv)


if __name__ == "__main__":
  app.run(run)
