"""The accelerators a host has, seen without JAX, and the stop for a silent fallback to the CPU.

JAX picks the CPU when it finds no usable GPU or TPU backend: with the CPU-only
jaxlib of requirements.txt on a GPU host, or a CUDA plugin that does not match
the driver. A run would then train at a few images per second without saying
why. The host's hardware tells what it has: ``/dev/nvidia<N>`` for NVIDIA GPUs,
and for TPUs the PCI devices of Google's vendor id with a TPU device id (the
check of jax._src.hardware_utils, which is private and loads all of JAX; device
files alone would also match other VFIO passthrough devices).
"""
import glob
import os
from typing import Dict, List, Mapping

from mixsiam_jax.errors import UserError

# What to install on top of requirements.txt, per kind of accelerator (README, "Install").
INSTALL = {"NVIDIA GPU": "pip install -r requirements-gpu.txt",
           "TPU": "pip install -r requirements-tpu.txt"}
# PCI ids of TPU chips (jax._src.hardware_utils._TPU_PCI_DEVICE_IDS: v3, plc, v4, v5p,
# v5e, v6e, TPU7x); Google's other PCI devices (e.g. the gVNIC of every GCP VM) are not TPUs.
_GOOGLE_PCI_VENDOR = "0x1ae0"
_TPU_PCI_DEVICES = ("0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076")


class CpuFallbackError(UserError):
  """JAX runs on the CPU of a host that has accelerators, and the user did not ask for it."""


def visible_accelerators(dev_root: str = "/dev", pci_root: str = "/sys/bus/pci/devices"
                         ) -> Dict[str, List[str]]:
  """The accelerators of this host, by kind ('NVIDIA GPU', 'TPU').

  Args:
    dev_root: the device directory (a fake one in tests).
    pci_root: the PCI devices' sysfs directory (a fake one in tests).

  Returns:
    {kind: sorted paths (device files, PCI device directories)} for every kind found.
  """
  found = {}
  gpus = sorted(glob.glob(os.path.join(dev_root, "nvidia[0-9]*")))
  if gpus:
    found["NVIDIA GPU"] = gpus
  tpus = sorted(device for device in glob.glob(os.path.join(pci_root, "*"))
                if _read(os.path.join(device, "vendor")) == _GOOGLE_PCI_VENDOR
                and _read(os.path.join(device, "device")) in _TPU_PCI_DEVICES)
  if tpus:
    found["TPU"] = tpus
  return found


def _read(path: str) -> str:
  try:
    with open(path) as f:
      return f.read().strip()
  except OSError:
    return ""


def cpu_requested(environ: Mapping[str, str]) -> bool:
  """Whether JAX_PLATFORMS asks for the CPU alone (the way to train on the CPU on purpose)."""
  platforms = [p.strip() for p in environ.get("JAX_PLATFORMS", "").split(",") if p.strip()]
  return platforms == ["cpu"]


def check_backend(backend: str, *, allow_cpu: bool, environ: Mapping[str, str],
                  dev_root: str = "/dev", pci_root: str = "/sys/bus/pci/devices") -> None:
  """Refuses a CPU backend on a host with visible accelerators unless asked for.

  Args:
    backend: ``jax.default_backend()``.
    allow_cpu: the user's --allow_cpu flag.
    environ: the process environment (JAX_PLATFORMS=cpu also allows the CPU).
    dev_root, pci_root: where to look (see visible_accelerators).

  Raises:
    CpuFallbackError: naming the devices found, the install command, and
      the two ways to train on the CPU on purpose.
  """
  if backend != "cpu" or allow_cpu or cpu_requested(environ):
    return
  found = visible_accelerators(dev_root, pci_root)
  if not found:
    return
  what = "; ".join(f"{kind}s ({', '.join(paths[:4])}{', ...' if len(paths) > 4 else ''})"
                   for kind, paths in found.items())
  install = " or ".join(f"`{INSTALL[kind]}`" for kind in found)
  raise CpuFallbackError(
      f"JAX found no usable accelerator and would train on the CPU, but this host has {what}. "
      f"Install JAX for them on top of requirements.txt ({install}; README, \"Install\"), or "
      "train on the CPU on purpose with JAX_PLATFORMS=cpu or --allow_cpu.")
