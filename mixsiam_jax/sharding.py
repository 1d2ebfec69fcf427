"""Device mesh, batch placement and multi-process helpers.

One mesh axis, 'data': parameters are replicated, batches are sharded along
their first axis over every device of every process. Under jax.jit this makes
means over the batch (losses, BatchNorm statistics) global for free.
"""
import collections
import itertools
from typing import Any, Iterable, Iterator, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mixsiam_jax.options.checks import OptionsError

DATA_AXIS = "data"


def create_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A 1-D data-parallel mesh over ``devices`` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def mesh_platform(mesh: Mesh) -> str:
  """'cpu', 'gpu' or 'tpu': the platform of the mesh's devices (not the host's default backend).

  Everything platform-dependent (compute dtype, convolution choice, compiler
  options) is decided from this, so a step compiled on a CPU host for TPU or GPU
  devices gets what those devices need.
  """
  platform = mesh.devices.flat[0].platform.lower()
  return "gpu" if platform in ("cuda", "rocm", "gpu") else platform


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding that keeps a full copy on every device."""
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Sharding that splits the leading (batch) axis over the data axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def mesh_process_count(mesh: Mesh) -> int:
  """The number of processes (hosts) that own the devices of ``mesh``."""
  return len({device.process_index for device in mesh.devices.flat})


def check_global_batch(global_batch_size: int, mesh: Mesh) -> int:
  """Checks that the global batch splits evenly over the mesh's devices and processes.

  Processes are counted on the mesh, not on the host running this, so the
  answer also holds for a mesh of another machine's devices (a compile plan).

  Args:
    global_batch_size: examples per step, over all processes.
    mesh: the data-parallel mesh.

  Returns:
    The number of examples each process loads per step.

  Raises:
    OptionsError: naming the batch size, the device count and a batch that fits.
  """
  num_devices = mesh.devices.size
  if global_batch_size <= 0 or global_batch_size % num_devices:
    raise OptionsError(
        f"batch_size={global_batch_size} must be a positive multiple of the number of devices "
        f"({num_devices}); set --config.batch_size to e.g. "
        f"{max(1, -(-global_batch_size // num_devices)) * num_devices}.")
  return global_batch_size // mesh_process_count(mesh)


def global_batch(local_batch: Any, mesh: Mesh) -> Any:
  """Assembles global arrays, sharded on the batch axis, from each process's slice.

  Args:
    local_batch: pytree of host arrays [B_local, ...], this process's part of the batch.
    mesh: the data-parallel mesh.

  Returns:
    The same pytree of jax.Arrays with global shape [B_local * process_count, ...].
  """
  sharding = batch_sharded(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def prefetch_to_mesh(batches: Iterable[Any], mesh: Mesh, size: int = 2) -> Iterator[Any]:
  """Places host batches on the mesh ``size`` steps ahead of their use.

  The copy of the next batches to the devices is asynchronous, so it overlaps
  the running step; this generator never blocks on device computation.

  Args:
    batches: iterable of per-process host batches (pytrees of arrays).
    mesh: the data-parallel mesh.
    size: number of batches kept in flight (>= 1).

  Yields:
    Global sharded batches, in order. Closing the generator closes ``batches``.
  """
  queue = collections.deque()
  iterator = iter(batches)
  try:
    for batch in itertools.islice(iterator, max(size, 1)):
      queue.append(global_batch(batch, mesh))
    while queue:
      ready = queue.popleft()
      # Refill before handing out, so `size` batches are in flight while the step runs.
      for batch in itertools.islice(iterator, 1):
        queue.append(global_batch(batch, mesh))
      yield ready
  finally:
    # Closing this generator closes its source (e.g. a data/iterate.py stream and its thread).
    close = getattr(iterator, "close", None)
    if close is not None:
      close()


def replicated_key(key: jax.Array, mesh: Mesh) -> jax.Array:
  """A copy of PRNG ``key`` replicated on every device of ``mesh`` (all processes).

  The key goes through host memory, so this works whether or not the mesh spans
  several processes, as long as every process passes the same key.
  """
  data = np.asarray(jax.random.key_data(key))
  impl = jax.random.key_impl(key)
  return jax.jit(lambda d: jax.random.wrap_key_data(d, impl=impl),
                 out_shardings=replicated(mesh))(data)
