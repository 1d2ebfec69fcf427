"""The accelerators a host has, seen without JAX, and the stop for a silent fallback to the CPU.

JAX picks the CPU when it finds no usable GPU or TPU backend: with the CPU-only
jaxlib of requirements.txt on a GPU host, or a CUDA plugin that does not match
the driver. A run would then train at a few images per second without saying
why. Device files tell what the host has: ``/dev/nvidia<N>`` for NVIDIA GPUs,
``/dev/accel<N>`` (TPU v2-v4) or ``/dev/vfio/<N>`` (TPU v5e and later) for TPUs.
"""
import glob
import os
from typing import Dict, List, Mapping

from mixsiam_jax.errors import UserError

# What to install on top of requirements.txt, per kind of accelerator (README, "Install").
INSTALL = {"NVIDIA GPU": "pip install -r requirements-gpu.txt",
           "TPU": "pip install -r requirements-tpu.txt"}
_DEVICE_FILES = {"NVIDIA GPU": ("nvidia[0-9]*",), "TPU": ("accel[0-9]*", "vfio/[0-9]*")}


class CpuFallbackError(UserError):
  """JAX runs on the CPU of a host that has accelerators, and the user did not ask for it."""


def visible_accelerators(dev_root: str = "/dev") -> Dict[str, List[str]]:
  """The accelerator device files under ``dev_root``, by kind ('NVIDIA GPU', 'TPU').

  Args:
    dev_root: the device directory (a fake one in tests).

  Returns:
    {kind: sorted paths} for every kind with at least one device file.
  """
  found = {}
  for kind, patterns in _DEVICE_FILES.items():
    paths = sorted(p for pattern in patterns for p in glob.glob(os.path.join(dev_root, pattern)))
    if paths:
      found[kind] = paths
  return found


def cpu_requested(environ: Mapping[str, str]) -> bool:
  """Whether JAX_PLATFORMS asks for the CPU alone (the way to train on the CPU on purpose)."""
  platforms = [p.strip() for p in environ.get("JAX_PLATFORMS", "").split(",") if p.strip()]
  return platforms == ["cpu"]


def check_backend(backend: str, *, allow_cpu: bool, environ: Mapping[str, str],
                  dev_root: str = "/dev") -> None:
  """Refuses a CPU backend on a host with visible accelerators unless asked for.

  Args:
    backend: ``jax.default_backend()``.
    allow_cpu: the user's --allow_cpu flag.
    environ: the process environment (JAX_PLATFORMS=cpu also allows the CPU).
    dev_root: the device directory.

  Raises:
    CpuFallbackError: naming the device files found, the install command, and
      the two ways to train on the CPU on purpose.
  """
  if backend != "cpu" or allow_cpu or cpu_requested(environ):
    return
  found = visible_accelerators(dev_root)
  if not found:
    return
  what = "; ".join(f"{kind}s ({', '.join(paths[:4])}{', ...' if len(paths) > 4 else ''})"
                   for kind, paths in found.items())
  install = " or ".join(f"`{INSTALL[kind]}`" for kind in found)
  raise CpuFallbackError(
      f"JAX found no usable accelerator and would train on the CPU, but this host has {what}. "
      f"Install JAX for them on top of requirements.txt ({install}; README, \"Install\"), or "
      "train on the CPU on purpose with JAX_PLATFORMS=cpu or --allow_cpu.")
