"""Helpers shared by several test modules."""
import pathlib

from mixsiam_jax import models
from mixsiam_jax.options import ModelOptions


def network(dtype="float32", conv_impl="xla", **model):
  """A MixSiamNetwork with the given compute dtype and convolution (no platform default).

  Args:
    dtype: 'float32' or 'bfloat16' (the compute dtype; parameters stay float32).
    conv_impl: the convolution implementation, 'xla' or 'matmul_weight_grad'.
    **model: further ModelOptions fields (depth, width, stem, head sizes).

  Returns:
    The MixSiamNetwork, built as for a CPU mesh.
  """
  options = ModelOptions(half_precision=dtype == "bfloat16", conv_impl=conv_impl, **model)
  return models.MixSiamNetwork(options, "cpu")


def snapshot(directory, mtimes: bool = False):
  """{relative path: contents} of every file below ``directory`` (with mtimes: (mtime_ns, contents)).

  For asserting that a program left a directory exactly as it was.
  """
  directory = pathlib.Path(directory)
  return {str(p.relative_to(directory)): ((p.stat().st_mtime_ns, p.read_bytes()) if mtimes
                                          else p.read_bytes())
          for p in sorted(directory.rglob("*")) if p.is_file()}
