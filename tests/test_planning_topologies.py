"""Topology names -> compile-only devices, and the chip table."""
import math

import pytest

from mixsiam_jax.planning import topologies


def test_slice_names_map_to_topologies_of_the_right_size():
  chips = lambda topology: math.prod(int(n) for n in topology.split(":")[1].split("x"))
  for name, topology in topologies.TPU_SLICES.items():
    generation, count = name.split("-")
    assert topology.startswith(generation + ":")
    # v4 / v5p slices count TensorCores (2 per chip), v5e / v6e count chips.
    per_chip = 2 if generation in ("v4", "v5p") else 1
    assert chips(topology) * per_chip == int(count), name


def test_chip_table_names_its_sources():
  for chip in topologies.CHIPS.values():
    assert chip.memory_bytes > 8 * 2**30 and chip.peak_bf16_flops > 1e14 and chip.source


def test_cpu_devices_of_this_host():
  topology = topologies.devices_for("cpu:4")
  assert topology.platform == "cpu" and len(topology.devices) == 4
  assert topology.chip is None and topology.usable_memory_bytes is None


@pytest.mark.parametrize("name,message", [
    ("tpu-v9", "is not known"),
    ("cpu:99", "this host has 8 CPU devices"),
    ("a100x8", "is not known"),
])
def test_bad_names_are_one_clear_error(name, message):
  with pytest.raises(topologies.TopologyError, match=message):
    topologies.devices_for(name)


def test_gpu_hosts_are_whole_hosts_of_eight():
  with pytest.raises(topologies.TopologyError, match="whole hosts of 8"):
    topologies.devices_for("h100x12")
