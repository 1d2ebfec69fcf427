"""Accelerator topologies for deviceless compiles: named TPU slices and GPU hosts, chip data.

``devices_for(name)`` returns compile-only devices for a TPU topology (libtpu,
``jax.experimental.topologies``), for N NVIDIA GPUs (jax-cuda12-plugin and a
device description from ``gpu_specs/``), or this host's CPU devices. ``CHIPS``
holds what a plan compares against: memory per device and peak bfloat16 FLOP/s.
"""
import dataclasses
import os
import pathlib
import re
from typing import List, Optional, Tuple

import jax
from jax.experimental import topologies as jax_topologies

from mixsiam_jax.errors import UserError

GPU_SPECS = pathlib.Path(__file__).resolve().parent / "gpu_specs"
GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  """One accelerator chip (= one JAX device here).

  Attributes:
    name: short name used in topology names.
    memory_bytes: device memory (HBM) per chip.
    peak_bf16_flops: dense bfloat16 peak, FLOP/s per chip.
    source: where the two numbers come from.
  """
  name: str
  memory_bytes: int
  peak_bf16_flops: float
  source: str


CHIPS = {
    # Cloud TPU system architecture pages (cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e),
    # "chip specifications": HBM capacity and peak bf16 compute per chip.
    "v4": Chip("v4", 32 * GIB, 275e12, "cloud.google.com/tpu/docs/v4: 32 GiB HBM2, 275 TFLOP/s"),
    "v5e": Chip("v5e", 16 * GIB, 197e12, "cloud.google.com/tpu/docs/v5e: 16 GiB HBM2, 197 TFLOP/s"),
    "v5p": Chip("v5p", 95 * GIB, 459e12, "cloud.google.com/tpu/docs/v5p: 95 GiB HBM2e, 459 TFLOP/s"),
    "v6e": Chip("v6e", 32 * GIB, 918e12, "cloud.google.com/tpu/docs/v6e: 32 GiB HBM, 918 TFLOP/s"),
    # NVIDIA H100 Tensor Core GPU datasheet (SXM5): 80 GB HBM3, 989 TFLOP/s dense bf16
    # (1979 with sparsity); the memory size is the one in gpu_specs/h100_sxm.txtpb.
    "h100": Chip("h100", 84942979072, 989e12, "NVIDIA H100 datasheet (SXM5): 80 GB, 989 TFLOP/s "
                 "dense bf16"),
    # NVIDIA H200 datasheet (SXM): 141 GB HBM3e, the H100's 989 TFLOP/s dense bf16. No
    # device description is kept for it: it is here for 'local' (a real H200's report).
    "h200": Chip("h200", 141 * 10**9, 989e12, "NVIDIA H200 datasheet (SXM): 141 GB, 989 TFLOP/s "
                 "dense bf16"),
}
# device_kind (lower case) fragments -> chip, for the devices of this machine ('local').
_KINDS = (("h100", "h100"), ("h200", "h200"), ("v5 lite", "v5e"), ("v6 lite", "v6e"),
          ("v5p", "v5p"), ("tpu v5", "v5p"), ("tpu v4", "v4"))
# libtpu names the chips by their TPU generation; v4 and v5p run one JAX device per
# chip ("megacore": both TensorCores together), as every v4/v5p training job does.
_TPU_MEGACORE = ("v4", "v5p")
# Slice names as Cloud TPU sells them -> topology. v4/v5p count TensorCores (2 per
# chip), v5e/v6e count chips.
TPU_SLICES = {
    "v4-8": "v4:2x2x1", "v4-16": "v4:2x2x2", "v4-32": "v4:2x2x4", "v4-64": "v4:2x4x4",
    "v4-128": "v4:4x4x4", "v5p-8": "v5p:2x2x1", "v5p-16": "v5p:2x2x2", "v5p-32": "v5p:2x2x4",
    "v5p-64": "v5p:2x4x4", "v5p-128": "v5p:4x4x4", "v5e-1": "v5e:1x1", "v5e-4": "v5e:2x2",
    "v5e-8": "v5e:2x4", "v5e-16": "v5e:4x4", "v5e-32": "v5e:4x8", "v5e-64": "v5e:8x8",
    "v5e-128": "v5e:8x16", "v5e-256": "v5e:16x16", "v6e-1": "v6e:1x1", "v6e-4": "v6e:2x2",
    "v6e-8": "v6e:2x4", "v6e-16": "v6e:4x4", "v6e-32": "v6e:4x8", "v6e-64": "v6e:8x8",
    "v6e-128": "v6e:8x16", "v6e-256": "v6e:16x16",
}
GPUS_PER_HOST = 8
HELP = ("a TPU topology ('v5e:4x4', 'v4:2x2x4') or slice ('v5e-16', 'v4-32'), N GPUs "
        "('h100x8'; hosts of 8), 'cpu:N' (this host's CPU devices) or 'local' (the devices "
        "of this machine)")


class TopologyError(UserError):
  """The topology name is unknown, or the library it needs is not installed."""


@dataclasses.dataclass(frozen=True)
class Topology:
  """Compile-only devices and what they are.

  Attributes:
    name: the canonical name ('v5e:4x4', 'h100x8', 'cpu:8').
    platform: 'tpu', 'gpu' or 'cpu'.
    chip: the chip's data (None for CPU devices).
    devices: the devices, in mesh order.
    usable_memory_bytes: memory per device a program may use (None: unknown).
  """
  name: str
  platform: str
  chip: Optional[Chip]
  devices: Tuple[jax.Device, ...]
  usable_memory_bytes: Optional[int]


def gpu_memory_fraction() -> float:
  """The share of GPU memory JAX's allocator takes (XLA_PYTHON_CLIENT_MEM_FRACTION, 0.75)."""
  return float(os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.75"))


def _tpu_devices(topology: str) -> List[jax.Device]:
  try:
    # Optional (requirements-tpu.txt): needed, and imported, only for TPU topologies.
    import libtpu  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    raise TopologyError(f"--topology={topology} needs libtpu: pip install -r "
                        "requirements-tpu.txt (libtpu==0.0.43.2).") from None
  # Deviceless use: no TPU metadata server to ask, and other JAX processes on this
  # host may hold libtpu's lock file without using a TPU either.
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  generation = topology.split(":")[0]
  kwargs = {"chip_config_name": "megacore"} if generation in _TPU_MEGACORE else {}
  try:
    return list(jax_topologies.get_topology_desc(topology, platform="tpu", **kwargs).devices)
  except Exception as e:  # libtpu reports unknown shapes as runtime errors.
    raise TopologyError(f"--topology={topology}: libtpu refused it ({str(e).splitlines()[0]}); "
                        f"use {HELP}.") from e


def _gpu_devices(chip: str, count: int) -> List[jax.Device]:
  spec = GPU_SPECS / f"{chip}_sxm.txtpb"
  if not spec.exists():
    known = sorted(p.name.split("_")[0] for p in GPU_SPECS.glob("*.txtpb"))
    raise TopologyError(f"--topology={chip}x{count}: no device description for {chip!r} in "
                        f"{GPU_SPECS} (known: {known}).")
  hosts, per_host = (1, count) if count <= GPUS_PER_HOST else (count // GPUS_PER_HOST,
                                                                GPUS_PER_HOST)
  if hosts * per_host != count:
    raise TopologyError(f"--topology={chip}x{count}: more than {GPUS_PER_HOST} GPUs must be "
                        f"whole hosts of {GPUS_PER_HOST}.")
  try:
    return list(jax_topologies.get_topology_desc(
        platform="cuda", topology=f"1x{hosts}x{per_host}",
        target_config=spec.read_text()).devices)
  except (RuntimeError, KeyError, NotImplementedError) as e:
    raise TopologyError(
        f"--topology={chip}x{count} needs jax-cuda12-plugin (pip install "
        "'jax-cuda12-plugin[with-cuda]==0.10.2', about 4.4 GB) and, on a host without a GPU, "
        f"JAX_PLATFORMS=cpu JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 ({str(e).splitlines()[0]}).") from e


def _local() -> Topology:
  """This machine's own devices (all processes'), with their chip data when known."""
  devices = tuple(jax.devices())
  kind = devices[0].device_kind.lower()
  chip = next((CHIPS[c] for fragment, c in _KINDS if fragment in kind), None)
  platform = "gpu" if devices[0].platform in ("cuda", "rocm", "gpu") else devices[0].platform
  try:
    usable = (devices[0].memory_stats() or {}).get("bytes_limit")
  except Exception:  # pylint: disable=broad-except  (backends without memory stats raise)
    usable = None
  if usable is None and chip is not None:
    usable = chip.memory_bytes
  return Topology("local", platform, chip, devices, usable)


def devices_for(name: str) -> Topology:
  """Compile-only devices for a topology name.

  Args:
    name: see HELP; TPU slice names are mapped through TPU_SLICES.

  Returns:
    The Topology.

  Raises:
    TopologyError: unknown name, or libtpu / the CUDA plugin missing.
  """
  name = TPU_SLICES.get(name, name)
  tpu = re.fullmatch(r"(v4|v5e|v5p|v6e):(\d+(?:x\d+){1,2})", name)
  gpu = re.fullmatch(r"([a-z]\d+)x(\d+)", name)
  cpu = re.fullmatch(r"cpu:(\d+)", name)
  if tpu:
    chip = CHIPS[tpu.group(1)]
    return Topology(name, "tpu", chip, tuple(_tpu_devices(name)), chip.memory_bytes)
  if gpu and gpu.group(1) in CHIPS:
    chip = CHIPS[gpu.group(1)]
    devices = _gpu_devices(chip.name, int(gpu.group(2)))
    return Topology(name, "gpu", chip, tuple(devices),
                    int(chip.memory_bytes * gpu_memory_fraction()))
  if name == "local":
    return _local()
  if cpu:
    count = int(cpu.group(1))
    available = jax.devices("cpu")
    if not 0 < count <= len(available):
      raise TopologyError(f"--topology={name}: this host has {len(available)} CPU devices "
                          "(XLA_FLAGS=--xla_force_host_platform_device_count=N for more).")
    return Topology(name, "cpu", None, tuple(available[:count]), None)
  raise TopologyError(f"--topology={name!r} is not known; use {HELP}.")
