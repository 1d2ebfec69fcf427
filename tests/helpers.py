"""Helpers shared by several test modules."""
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
