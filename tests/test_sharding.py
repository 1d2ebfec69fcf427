"""Mesh and batch placement helpers."""
import dataclasses

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from mixsiam_jax import sharding
from mixsiam_jax.options.checks import OptionsError


def test_mesh_spans_all_devices():
  mesh = sharding.create_mesh()
  assert mesh.axis_names == (sharding.DATA_AXIS,)
  assert mesh.devices.size == jax.device_count() == 8


def test_global_batch_is_sharded_on_the_batch_axis():
  mesh = sharding.create_mesh()
  local = {"views": np.arange(16 * 2 * 3).reshape(16, 2, 3).astype(np.uint8),
           "label": np.arange(16, dtype=np.int32)}
  batch = sharding.global_batch(local, mesh)
  assert batch["views"].shape == (16, 2, 3)
  np.testing.assert_array_equal(np.asarray(batch["label"]), local["label"])
  shards = batch["label"].addressable_shards
  assert len(shards) == 8
  assert sorted(int(s.data[0]) for s in shards) == list(range(0, 16, 2))
  assert all(s.data.shape == (2,) for s in shards)


def test_prefetch_keeps_order_and_runs_ahead():
  mesh = sharding.create_mesh()
  pulled = []

  def source():
    for i in range(5):
      pulled.append(i)
      yield {"x": np.full((8,), i, np.float32)}

  it = sharding.prefetch_to_mesh(source(), mesh, size=2)
  first = next(it)
  assert float(first["x"][0]) == 0 and pulled == [0, 1, 2]  # two batches ahead of the consumer
  rest = [float(b["x"][0]) for b in it]
  assert rest == [1, 2, 3, 4]


@dataclasses.dataclass(frozen=True)
class _RemoteDevice:
  """A stand-in for another machine's device: only what the mesh helpers read."""
  id: int
  process_index: int
  platform: str


def test_platform_and_processes_come_from_the_mesh_not_the_host():
  assert sharding.mesh_platform(sharding.create_mesh()) == "cpu"
  # 8 TPU devices on 4 hosts, described on this one-process CPU host.
  mesh = Mesh(np.array([_RemoteDevice(i, i // 2, "tpu") for i in range(8)]), (sharding.DATA_AXIS,))
  assert sharding.mesh_platform(mesh) == "tpu"
  assert sharding.mesh_process_count(mesh) == 4
  assert sharding.check_global_batch(64, mesh) == 16  # per process, not 64 // jax.process_count()
  gpus = Mesh(np.array([_RemoteDevice(i, 0, "cuda") for i in range(2)]), (sharding.DATA_AXIS,))
  assert sharding.mesh_platform(gpus) == "gpu"


def test_check_global_batch_names_the_fix():
  with pytest.raises(OptionsError, match=r"batch_size=12 .*\(8\).*e\.g\. 16"):
    sharding.check_global_batch(12, sharding.create_mesh())
