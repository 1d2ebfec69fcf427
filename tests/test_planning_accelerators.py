"""Tests of mixsiam_jax/planning/accelerators.py: no silent fallback to the CPU on a host with accelerators."""
import os
import pathlib
import subprocess
import sys

import pytest

from mixsiam_jax.planning import accelerators
from mixsiam_jax.run import library_noise

REPO = pathlib.Path(__file__).resolve().parents[1]
NO_PCI = "/nonexistent/pci"  # tests of device files must not see this host's PCI devices


def fake_dev(root, *names):
  for name in names:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
  return str(root)


def fake_pci(root, *devices):
  """root/<address>/{vendor,device} for each (vendor id, device id)."""
  for i, (vendor, device) in enumerate(devices):
    path = root / f"0000:00:{i + 4:02x}.0"
    path.mkdir(parents=True)
    (path / "vendor").write_text(vendor + "\n")
    (path / "device").write_text(device + "\n")
  return str(root)


def test_device_files_and_pci_ids_tell_gpus_and_tpus(tmp_path):
  dev = fake_dev(tmp_path / "dev", "nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "accel0",
                 "vfio/0", "null")
  # Two v5e chips, the gVNIC every GCP VM has (Google's vendor id, not a TPU), an NVIDIA GPU.
  pci = fake_pci(tmp_path / "pci", ("0x1ae0", "0x0063"), ("0x1ae0", "0x0063"),
                 ("0x1ae0", "0x0042"), ("0x10de", "0x2335"))
  assert accelerators.visible_accelerators(dev, pci) == {
      "NVIDIA GPU": [f"{dev}/nvidia0", f"{dev}/nvidia1"],
      "TPU": [f"{pci}/0000:00:04.0", f"{pci}/0000:00:05.0"]}
  # A CPU host with a VFIO passthrough device and a gVNIC has no accelerator.
  cpu_pci = fake_pci(tmp_path / "cpu_pci", ("0x1ae0", "0x0042"), ("0x8086", "0x1572"))
  assert accelerators.visible_accelerators(fake_dev(tmp_path / "cpu", "null", "vfio/0"),
                                           cpu_pci) == {}


def test_the_cpu_backend_on_a_gpu_host_stops_unless_asked_for(tmp_path):
  dev = fake_dev(tmp_path, "nvidia0", "nvidia1")
  with pytest.raises(accelerators.CpuFallbackError) as error:
    accelerators.check_backend("cpu", allow_cpu=False, environ={}, dev_root=dev,
                               pci_root=NO_PCI)
  assert str(error.value) == (
      f"JAX found no usable accelerator and would train on the CPU, but this host has NVIDIA "
      f"GPUs ({dev}/nvidia0, {dev}/nvidia1). Install JAX for them on top of requirements.txt "
      "(`pip install -r requirements-gpu.txt`; README, \"Install\"), or train on the CPU on "
      "purpose with JAX_PLATFORMS=cpu or --allow_cpu.")
  accelerators.check_backend("cpu", allow_cpu=True, environ={}, dev_root=dev,
                             pci_root=NO_PCI)
  accelerators.check_backend("cpu", allow_cpu=False, environ={"JAX_PLATFORMS": "cpu"},
                             dev_root=dev,
                             pci_root=NO_PCI)
  accelerators.check_backend("gpu", allow_cpu=False, environ={}, dev_root=dev,
                             pci_root=NO_PCI)
  with pytest.raises(accelerators.CpuFallbackError, match="requirements-tpu.txt"):
    accelerators.check_backend("cpu", allow_cpu=False, environ={"JAX_PLATFORMS": "cuda,cpu"},
                               dev_root=str(tmp_path / "none"),
                               pci_root=fake_pci(tmp_path / "tpu", ("0x1ae0", "0x005e")))
  accelerators.check_backend("cpu", allow_cpu=False, environ={}, dev_root=str(tmp_path / "none"),
                             pci_root=str(tmp_path / "none"))


# main.py with the device files faked: a GPU host whose JAX is the CPU build.
MAIN_ON_A_GPU_HOST = """
import sys
sys.path.insert(0, {repo!r})
from mixsiam_jax.planning import accelerators
real = accelerators.visible_accelerators
accelerators.visible_accelerators = lambda *args: real({dev!r}, {dev!r} + "/no_pci")
import main
from absl import app
sys.argv = ["main.py"] + {args!r}
app.run(main.main, flags_parser=main.cli.parse_flags)
"""


def test_main_stops_in_one_line_on_a_gpu_host_without_gpu_jax(tmp_path):
  dev = fake_dev(tmp_path / "dev", "nvidia0")
  args = ["--config=configs/cifar10.py:tiny", "--config.dataset=folder:/nonexistent",
          "--config.eval_dataset=", f"--workdir={tmp_path / 'w'}"]
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}  # JAX chooses
  result = subprocess.run([sys.executable, "-c", MAIN_ON_A_GPU_HOST.format(
      repo=str(REPO), dev=dev, args=args)], cwd=REPO, capture_output=True, text=True, env=env,
                          timeout=120)
  assert result.returncode == 1
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert lines[-1].startswith("error: JAX found no usable accelerator and would train on the "
                              f"CPU, but this host has NVIDIA GPUs ({dev}/nvidia0)."), lines
  # The start-up notices that main.py holds back (TensorFlow's oneDNN, libtpu's TPU search,
  # on the CPUs and installs that print them) do not stand before the error.
  held_back = library_noise.TENSORFLOW_START_NOTICES + library_noise.TPU_SEARCH_NOTICES
  assert not [line for line in lines if any(n in line for n in held_back)], lines
