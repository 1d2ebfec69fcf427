"""Reading collectives, loops and memory out of compiled HLO."""
import types

from mixsiam_jax import compile_report

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
          for r in compile_report.collectives(HLO)}
  assert rows == {
      ("all-reduce", "f32"): (3, 64 * 4 + 3 * 3 * 8 * 8 * 4 + 256 * 256 * 4),
      ("all-reduce", "bf16"): (1, 16 * 2),
      ("all-gather", "f32"): (1, 16 * 8 * 4),  # the gathered result, not the operand
      ("reduce-scatter", "bf16"): (1, 2 * 8 * 2),
  }


def test_program_shape_counts_loops_and_convolutions():
  assert compile_report.program_shape(HLO) == {"while_loops": 1, "convolutions": 1}


def test_memory_total_counts_donated_buffers_once():
  stats = types.SimpleNamespace(argument_size_in_bytes=100, output_size_in_bytes=90,
                                alias_size_in_bytes=80, temp_size_in_bytes=50,
                                generated_code_size_in_bytes=5)
  compiled = types.SimpleNamespace(memory_analysis=lambda: stats)
  mem = compile_report.memory(compiled, usable_bytes=165)
  assert mem["total"] == 100 + 90 - 80 + 50 + 5 and mem["fits"]
  assert not compile_report.memory(compiled, usable_bytes=164)["fits"]
  assert compile_report.memory(compiled, usable_bytes=None)["fits"] is None
