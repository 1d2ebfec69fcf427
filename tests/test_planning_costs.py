"""Reading collectives, loops and memory out of compiled HLO."""
import types

import jax
import jax.numpy as jnp
import pytest
from jax import lax

from mixsiam_jax.planning import costs

HLO = """
ENTRY %main {
  %all-reduce = f32[64]{0} all-reduce(%fusion.1), channel_id=1, to_apply=%add
  %all-reduce.2 = (f32[3,3,8,8]{3,2,1,0}, bf16[16]{0}) all-reduce(%a, %b), channel_id=2
  %all-reduce-start = f32[256,256]{1,0} all-reduce-start(%dot), channel_id=3
  %all-reduce-done = f32[256,256]{1,0} all-reduce-done(%all-reduce-start)
  %all-gather-start = (f32[4,8]{1,0}, f32[16,8]{1,0}) all-gather-start(%p), dimensions={0}
  %all-gather-done = f32[16,8]{1,0} all-gather-done(%all-gather-start)
  ROOT %reduce-scatter = bf16[2,8]{1,0} reduce-scatter(%q), dimensions={0}
  %while.3 = (s32[], f32[8]) while(%tuple), condition=%cond, body=%body
  %convolution.4 = bf16[8,16,16,8]{3,2,1,0} convolution(%x, %w), window={size=3x3}
  %add.5 = f32[8]{0} add(%all-reduce, %all-reduce)
}
"""


def test_collectives_are_counted_once_with_their_bytes_and_dtypes():
  rows = {(r["kind"], r["dtype"]): (r["count"], r["bytes"])
          for r in costs.collectives(HLO)}
  assert rows == {
      ("all-reduce", "f32"): (3, 64 * 4 + 3 * 3 * 8 * 8 * 4 + 256 * 256 * 4),
      ("all-reduce", "bf16"): (1, 16 * 2),
      ("all-gather", "f32"): (1, 16 * 8 * 4),  # the gathered result, not the operand
      ("reduce-scatter", "bf16"): (1, 2 * 8 * 2),
  }


def test_program_shape_counts_loops_and_convolutions():
  assert costs.program_shape(HLO) == {"while_loops": 1, "convolutions": 1}


def test_memory_total_counts_donated_buffers_once():
  stats = types.SimpleNamespace(argument_size_in_bytes=100, output_size_in_bytes=90,
                                alias_size_in_bytes=80, temp_size_in_bytes=50,
                                generated_code_size_in_bytes=5)
  compiled = types.SimpleNamespace(memory_analysis=lambda: stats)
  mem = costs.memory(compiled, usable_bytes=165)
  assert mem["total"] == 100 + 90 - 80 + 50 + 5 and mem["fits"]
  assert not costs.memory(compiled, usable_bytes=164)["fits"]
  assert costs.memory(compiled, usable_bytes=None)["fits"] is None


def test_gpu_flops_come_from_the_lowered_step_not_from_the_gpu_module():
  """XLA:GPU's count leaves out cuDNN's convolutions; the plan counts the step itself:
  2 x (6 x 6 outputs x 16 channels x 4 images) x (3 x 3 x 3 taps), for 2 devices."""
  def step(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), "VALID",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))

  args = (jax.ShapeDtypeStruct((4, 8, 8, 3), jnp.float32),
          jax.ShapeDtypeStruct((3, 3, 3, 16), jnp.float32))
  gpu_module = types.SimpleNamespace(cost_analysis=lambda: {"flops": 10.0})
  gpu = costs.flops(gpu_module, step, args, num_devices=2, platform="gpu")
  assert gpu["per_device"] == pytest.approx(2 * (4 * 6 * 6 * 16) * (3 * 3 * 3) / 2, rel=0.01)
  assert gpu["source"].startswith("unpartitioned HLO")
  tpu = costs.flops(gpu_module, step, args, num_devices=2, platform="tpu")
  assert tpu == {"per_device": 10.0, "source": "compiled module"}


def _plan(**changes):
  plan = {"topology": "h100x8", "num_devices": 8, "device_kind": "NVIDIA H100 80GB HBM3",
          "num_processes": 1, "batch_size": 4096, "per_device_batch": 512, "dtype": "bfloat16",
          "conv_impl": "xla", "remat": False, "num_params": 40_000_000, "status": "fits",
          "memory": {"total": 70 * 2**30, "usable": 60 * 2**30, "fits": False, "arguments": 1,
                     "temporaries": 2, "outputs": 3, "aliased": 3},
          "flops": {"per_device": 2e13, "per_image": 4e10, "source": "compiled module"},
          "collectives": [], "program": {"while_loops": 0, "convolutions": 9},
          "compile_seconds": 12.0}
  plan.update(changes)
  return plan


def test_summary_says_whether_it_fits_from_memory_or_from_the_compiler():
  text = costs.summary(_plan(status="does_not_fit"))
  assert "DOES NOT FIT: 70.00 GiB per device of 60.00 GiB usable" in text
  assert "collective none" in text  # no collective is said as much
  text = costs.summary(_plan(status="does_not_fit", error="RESOURCE_EXHAUSTED: x"))
  assert text.splitlines()[-1] == "DOES NOT FIT: RESOURCE_EXHAUSTED: x"
  assert "FITS: 70.00 GiB" in costs.summary(
      _plan(memory={**_plan()["memory"], "fits": True}))


def test_the_device_crops_cost_is_that_of_two_products_per_view():
  """Analytic count: per view [S, C] x [C, C * 3] and [S, C] x [C, S * 3] products, 2 FLOPs per
  multiply-add; XLA adds the weights' element-wise ops (a few per cent at these sizes)."""
  batch, size, side = 2, 16, 64
  cost = costs.device_crops_cost(batch, size, side)
  products = 2 * batch * 2 * (size * side * side * 3 + size * size * side * 3)
  assert products <= cost["flops"] < 1.1 * products
  # At least the uint8 canvases read and the float32 views written.
  assert cost["bytes_accessed"] >= batch * side * side * 3 + batch * 2 * size * size * 3 * 4
