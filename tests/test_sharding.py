"""Mesh and batch placement helpers."""
import jax
import numpy as np

from mixsiam_jax import sharding


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
