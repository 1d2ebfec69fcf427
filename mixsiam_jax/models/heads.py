"""SimSiam's projection and prediction MLPs."""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mixsiam_jax.models.init import dense_bias_init, dense_kernel_init
from mixsiam_jax.models.norm import ViewBatchNorm


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
      x = nn.Dense(self.hidden_dim, use_bias=False, dtype=self.dtype,
                   kernel_init=dense_kernel_init, name=f"fc{i + 1}")(x)
      x = nn.relu(ViewBatchNorm(dtype=self.dtype, name=f"bn{i + 1}")(x, train, num_views))
    x = nn.Dense(self.out_dim, use_bias=False, dtype=self.dtype, kernel_init=dense_kernel_init,
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
    x = nn.Dense(self.hidden_dim, use_bias=False, dtype=self.dtype,
                 kernel_init=dense_kernel_init, name="fc1")(z)
    x = nn.relu(ViewBatchNorm(dtype=self.dtype, name="bn1")(x, train, num_views))
    x = nn.Dense(self.out_dim, use_bias=True, dtype=self.dtype, kernel_init=dense_kernel_init,
                 bias_init=dense_bias_init(self.hidden_dim), name="fc2")(x)
    return x.astype(jnp.float32)
