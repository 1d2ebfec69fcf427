"""SimSiam's projection and prediction MLPs."""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mixsiam_jax.models import precision
from mixsiam_jax.models.activation import relu
from mixsiam_jax.models.init import dense_bias_init, dense_kernel_init
from mixsiam_jax.models.norm import ViewBatchNorm


def dense_layer(features: int, dtype: Any, **kwargs) -> nn.Dense:
  """nn.Dense whose kernel gradient is float32 when the compute dtype is lower.

  Args:
    features: output width.
    dtype: compute dtype.
    **kwargs: passed to nn.Dense (use_bias, initialisers, name).

  Returns:
    The nn.Dense.
  """
  if precision.is_reduced(dtype):
    kwargs.update(promote_dtype=precision.promote_inputs,
                  dot_general=precision.dense_dot_general)
  return nn.Dense(features, dtype=dtype, **kwargs)


class Projector(nn.Module):
  """Projection MLP: (num_layers - 1) x [fc, BN, ReLU], then fc and an affine-free BN.

  The official code keeps a frozen bias on the last fc; the BN after it removes
  any constant, so we omit it.

  Attributes:
    hidden_dim: width of the hidden layers (2048).
    out_dim: output width (2048).
    num_layers: 3 (ImageNet) or 2 (SimSiam's CIFAR variant).
    dtype: compute dtype.
  """
  hidden_dim: int = 2048
  out_dim: int = 2048
  num_layers: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, num_views: int = 1) -> jax.Array:
    """Maps features [N, F] to projections z [N, out_dim] (float32)."""
    if self.num_layers < 1:
      raise ValueError(f"model.projector_layers={self.num_layers} must be >= 1.")
    for i in range(self.num_layers - 1):
      x = dense_layer(self.hidden_dim, self.dtype, use_bias=False,
                      kernel_init=dense_kernel_init, name=f"fc{i + 1}")(x)
      x = relu(ViewBatchNorm(dtype=self.dtype, name=f"bn{i + 1}")(x, train, num_views))
    x = dense_layer(self.out_dim, self.dtype, use_bias=False, kernel_init=dense_kernel_init,
                    name=f"fc{self.num_layers}")(x)
    x = ViewBatchNorm(use_scale=False, use_bias=False, dtype=jnp.float32,
                      name=f"bn{self.num_layers}")(x, train, num_views)
    return x.astype(jnp.float32)


class Predictor(nn.Module):
  """Prediction MLP: fc (no bias), BN, ReLU, fc (with bias); a 2048-512-2048 bottleneck.

  Attributes:
    hidden_dim: bottleneck width (512).
    out_dim: output width; equals the projector's output width.
    dtype: compute dtype.
  """
  hidden_dim: int = 512
  out_dim: int = 2048
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array, train: bool, num_views: int = 1) -> jax.Array:
    """Maps projections z [N, D] to predictions p [N, out_dim] (float32)."""
    x = dense_layer(self.hidden_dim, self.dtype, use_bias=False,
                    kernel_init=dense_kernel_init, name="fc1")(z)
    x = relu(ViewBatchNorm(dtype=self.dtype, name="bn1")(x, train, num_views))
    x = dense_layer(self.out_dim, self.dtype, use_bias=True, kernel_init=dense_kernel_init,
                    bias_init=dense_bias_init(self.hidden_dim), name="fc2")(x)
    return x.astype(jnp.float32)
