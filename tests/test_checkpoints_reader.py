"""Tests of checkpoints/reader.py: a pretraining run's checkpoint restored replicated."""
import jax
import numpy as np
import pytest

from mixsiam_jax import sharding
from mixsiam_jax.checkpoints import reader, storage
from tests.test_checkpoints_storage import saved_run, truncate


# Orbax's restore of a truncated step can leave reads that later hit its closed event loop;
# the programs drop those echoes (run/library_noise.drop_abandoned_reads, tested there).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_restore_replicated_names_the_intact_step(tmp_path):
  directory = saved_run(tmp_path, (3, 6))
  truncate(directory / "6")
  mesh = sharding.create_mesh(jax.devices()[:1])
  with pytest.raises(storage.CheckpointError,
                     match=r"checkpoints/6 is unreadable .*step 3 is intact"):
    reader.restore_replicated(str(tmp_path), mesh)
  # An explicit older step is still restored.
  restored, meta, step = reader.restore_replicated(str(tmp_path), mesh, step=3)
  assert step == 3 and np.all(np.asarray(restored["params"]["w"]) == 3)
  assert meta == {"image_size": 16}


def test_what_cannot_be_restored_is_named_in_one_line(tmp_path):
  mesh = sharding.create_mesh(jax.devices()[:1])
  refusals = [("", "--config.pretrained is empty"),
              (str(tmp_path / "missing"), "does not exist or is not a directory"),
              (str(tmp_path), "holds no checkpoints/ directory")]
  for workdir, needle in refusals:
    with pytest.raises(storage.CheckpointError, match=needle):
      reader.restore_replicated(workdir, mesh)
  saved_run(tmp_path, (3,))
  with pytest.raises(storage.CheckpointError, match=r"no checkpoint at step 4; available: \[3\]"):
    reader.restore_replicated(str(tmp_path), mesh, step=4)
  with pytest.raises(storage.CheckpointError, match=r"checkpoints/3 has no \['opt_state'\]"):
    reader.restore_replicated(str(tmp_path), mesh, items=("params", "opt_state"))
  tree, _, step = reader.restore_replicated(str(tmp_path), mesh, items=("batch_stats",))
  assert step == 3 and set(tree) == {"batch_stats"}
  assert tree["batch_stats"]["mean"].sharding.is_fully_replicated
