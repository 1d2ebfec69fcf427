"""Batch normalisation with separate statistics for each augmented view.

The official SimSiam code runs the encoder once per view, so every view is
normalised with the statistics of its own (global, SyncBatchNorm) batch. We run
all views in one pass for speed, laid out batch-major: row ``b * V + v`` holds
view ``v`` of example ``b``. Batch-major keeps each example's views on the same
device when the batch axis is sharded, so grouping the statistics by view needs
no communication beyond the usual cross-device mean that ``jax.jit`` inserts.
"""
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp


class ViewBatchNorm(nn.Module):
  """BatchNorm whose training statistics are computed per view.

  Running statistics follow torch.nn.BatchNorm semantics: the variance stored is
  the unbiased one, and the views update the running averages one after the
  other, in view order, as successive encoder calls do in PyTorch.

  Attributes:
    momentum: decay of the running averages (0.9 here = PyTorch momentum 0.1).
    epsilon: added to the variance.
    use_scale: learn a scale (False for the projector's last BN).
    use_bias: learn an offset.
    scale_init: initialiser of the scale (zeros for the last BN of a residual block).
    dtype: dtype of the output; statistics are always computed in float32.
  """
  momentum: float = 0.9
  epsilon: float = 1e-5
  use_scale: bool = True
  use_bias: bool = True
  scale_init: Callable[..., Any] = nn.initializers.ones
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, num_views: int = 1) -> jax.Array:
    """Normalises ``x`` [N, ..., C].

    Args:
      x: activations; in training N must be a multiple of ``num_views`` and
        rows are batch-major (see the module docstring).
      train: use batch statistics (and update the running ones) if True, the
        running statistics otherwise.
      num_views: number of views interleaved along the first axis.

    Returns:
      The normalised activations, shaped like ``x``.
    """
    features = x.shape[-1]
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))
    out_dtype = self.dtype or x.dtype
    xf = x.astype(jnp.float32)
    if train:
      grouped = xf.reshape((-1, num_views) + x.shape[1:])
      axes = (0,) + tuple(range(2, grouped.ndim - 1))
      mean = grouped.mean(axes, keepdims=True)
      var = self.variance(grouped, mean, axes)
      if not self.is_initializing():
        count = grouped.size // (num_views * features)
        unbiased = var * (count / max(count - 1, 1))
        new_mean, new_var = ra_mean.value, ra_var.value
        for v in range(num_views):
          new_mean = self.momentum * new_mean + (1 - self.momentum) * mean[:, v].reshape(-1)
          new_var = self.momentum * new_var + (1 - self.momentum) * unbiased[:, v].reshape(-1)
        ra_mean.value, ra_var.value = new_mean, new_var
      y = (grouped - mean) * jax.lax.rsqrt(var + self.epsilon)
      y = y.reshape(x.shape)
    else:
      y = (xf - ra_mean.value) * jax.lax.rsqrt(ra_var.value + self.epsilon)
    if self.use_scale:
      y = y * self.param("scale", self.scale_init, (features,), jnp.float32)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    return y.astype(out_dtype)

  def variance(self, grouped: jax.Array, mean: jax.Array, axes) -> jax.Array:
    """The biased variance of ``grouped`` over ``axes`` around its ``mean`` (float32).

    Two passes: E[x^2] - E[x]^2 loses precision when a channel's mean is large
    against its spread (benchmarks/step_module_variants.py measures what the
    second pass costs on a GPU).
    """
    return jnp.square(grouped - mean).mean(axes, keepdims=True)
