"""Batch normalisation with separate statistics for each augmented view.

The official SimSiam code runs the encoder once per view, so every view is
normalised with the statistics of its own (global, SyncBatchNorm) batch. We run
all views in one pass for speed, laid out batch-major: row ``b * V + v`` holds
view ``v`` of example ``b``. Batch-major keeps each example's views on the same
device when the batch axis is sharded, so grouping the statistics by view needs
no communication beyond the usual cross-device combination that ``jax.jit``
inserts.

The training statistics take one pass over the activations, at the cost of
stock ``nn.BatchNorm``'s E[x], E[x^2] pair, without its cancellation when a
channel's mean is large against its spread: one reduction of shifted sums
(shifted_moments), which XLA compiles into one multi-output reduction per
layer. The backward pass is written out: two per-view sums of the output
gradient, then one elementwise pass; the scale and bias gradients are formed
from those sums, so that every activation-sized reduction has the per-view
shape and XLA fuses them into one pass (docs/performance.md, section 7).
"""
import functools
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

Moments = Callable[[jax.Array, Sequence[int]], Tuple[jax.Array, jax.Array]]


def _merge(a, b):
  """Merges two partial (count, shift, sum of x - shift, sum of (x - shift)^2).

  The result keeps ``a``'s shift (``b``'s if ``a`` is empty) and moves ``b``'s sums
  to it: every term stays of the order of the data's spread.
  """
  count_a, shift_a, sum_a, sq_a = a
  count_b, shift_b, sum_b, sq_b = b
  a_empty = count_a == 0
  # Empty partials are the reduction's identity (0, 0, 0, 0): taking the other's
  # shift, instead of multiplying by a zero count, keeps them exact.
  delta = jnp.where(a_empty, jnp.zeros_like(shift_a), shift_b - shift_a)
  return (count_a + count_b, jnp.where(a_empty, shift_b, shift_a),
          sum_a + sum_b + count_b * delta, sq_a + sq_b + delta * (2 * sum_b + count_b * delta))


def shifted_moments(x: jax.Array, axes: Sequence[int]) -> Tuple[jax.Array, jax.Array]:
  """Mean and biased variance of ``x`` over ``axes`` in one reduction.

  Every partial result of the reduction is taken around a shift, one of its
  own values (the first it met): its count, the shift, and the sums of
  (x - shift) and (x - shift)^2. Shifts are values of the data, so these sums
  and the differences between shifts are of the order of the data's spread,
  not of its mean, and E[(x - k)^2] - E[x - k]^2 keeps the precision of the
  two-pass variance where E[x^2] - E[x]^2 cancels (docs/performance.md,
  section 7). No state is involved: the result depends on the batch alone.
  Counts are in ``x``'s dtype: exact up to 2^24 per view and channel in
  float32.

  Args:
    x: a floating array.
    axes: the axes to reduce.

  Returns:
    (mean, var), each shaped like ``x`` with ``axes`` kept as size 1.
  """
  zero = jnp.zeros((), x.dtype)
  _, shift, total, squares = lax.reduce(
      (jnp.ones_like(x), x, jnp.zeros_like(x), jnp.zeros_like(x)), (zero,) * 4, _merge,
      tuple(axes))
  count = 1
  for axis in axes:
    count *= x.shape[axis]
  offset = total / count
  var = jnp.maximum(squares / count - offset * offset, 0)
  return jnp.expand_dims(shift + offset, axes), jnp.expand_dims(var, axes)


def _group(x: jax.Array, num_views: int, dtype: Any) -> Tuple[jax.Array, Tuple[int, ...]]:
  """Batch-major rows [B * V, ..., C] -> ([B, V, ..., C] in ``dtype``, the per-view axes)."""
  grouped = x.astype(dtype).reshape((-1, num_views) + x.shape[1:])
  return grouped, (0,) + tuple(range(2, grouped.ndim - 1))


def _sum_views(per_view: jax.Array) -> jax.Array:
  """[1, V, 1, ..., C] -> [C], the views added in order.

  Slices and adds rather than a reduce: XLA would merge a reduce over the views
  with the per-view reduce before it into one over all rows, a second
  activation-sized reduction beside the per-view one.
  """
  rows = per_view.reshape(per_view.shape[1], per_view.shape[-1])
  total = rows[0]
  for v in range(1, rows.shape[0]):
    total = total + rows[v]
  return total


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def view_batch_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, num_views: int,
                    epsilon: float, out_dtype: Any, moments: Moments = shifted_moments):
  """Normalises each view of ``x`` with its own batch statistics.

  Args:
    x: activations [B * V, ..., C], rows batch-major (see the module docstring).
    scale: [C] multiplier (ones for none).
    bias: [C] offset (zeros for none).
    num_views: V.
    epsilon: added to the variance.
    out_dtype: dtype of the normalised output.
    moments: ``(grouped, axes) -> (mean, var)``, the statistics' computation
      (shifted_moments; benchmarks swap in others to compare).

  Returns:
    (y, mean, var): y shaped like ``x`` in ``out_dtype``; mean and the biased
    variance [1, V, 1, ..., C] in float32 (float64 for float64 ``x``). All three
    are differentiable.
  """
  return _forward(x, scale, bias, num_views, epsilon, out_dtype, moments)[0]


def _forward(x, scale, bias, num_views, epsilon, out_dtype, moments):
  grouped, axes = _group(x, num_views, jnp.promote_types(x.dtype, jnp.float32))
  mean, var = moments(grouped, axes)
  inv = lax.rsqrt(var + epsilon)
  y = (grouped - mean) * (inv * scale) + bias
  return (y.reshape(x.shape).astype(out_dtype), mean, var), (x, scale, mean, inv)


def _backward(num_views, epsilon, out_dtype, moments, residuals, cotangents):
  """The VJP of y = (x - mean) * inv * scale + bias, with mean and inv functions of x.

  With n rows per view, g = inv * scale, S1 = sum(dy) and S2 = sum(dy * (x - mean))
  over each view's rows, and d_mean, d_var the cotangents of the statistics:
  dx = g * dy + (d_mean - g * S1) / n + (x - mean) * (2 * d_var - g * inv^2 * S2) / n,
  d_scale = sum over views of inv * S2, d_bias = sum over views of S1.
  """
  del epsilon, out_dtype, moments
  x, scale, mean, inv = residuals
  grad_y, grad_mean, grad_var = cotangents
  grouped, axes = _group(x, num_views, mean.dtype)
  grad, _ = _group(grad_y, num_views, mean.dtype)
  count = grouped.size // (num_views * grouped.shape[-1])
  centred = grouped - mean
  sum_grad = grad.sum(axes, keepdims=True)
  sum_grad_centred = (grad * centred).sum(axes, keepdims=True)
  gain = inv * scale
  grad_x = (gain * grad + (grad_mean - gain * sum_grad) / count
            + centred * ((2 * grad_var - gain * inv * inv * sum_grad_centred) / count))
  return (grad_x.reshape(x.shape).astype(x.dtype),
          _sum_views(inv * sum_grad_centred).astype(scale.dtype),
          _sum_views(sum_grad).astype(scale.dtype))


view_batch_norm.defvjp(_forward, _backward)


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
    dtype: dtype of the output; statistics are computed in float32 (float64 for
      float64 activations).
    moments: how the training statistics are computed (shifted_moments;
      benchmarks/step_module_variants.py swaps in others to compare).
  """
  momentum: float = 0.9
  epsilon: float = 1e-5
  use_scale: bool = True
  use_bias: bool = True
  scale_init: Callable[..., Any] = nn.initializers.ones
  dtype: Optional[Any] = None
  moments: Moments = shifted_moments

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
    scale = (self.param("scale", self.scale_init, (features,), jnp.float32) if self.use_scale
             else jnp.ones((features,), jnp.float32))
    bias = (self.param("bias", nn.initializers.zeros, (features,), jnp.float32) if self.use_bias
            else jnp.zeros((features,), jnp.float32))
    out_dtype = self.dtype or x.dtype
    if not train:
      y = (x.astype(jnp.float32) - ra_mean.value) * (
          lax.rsqrt(ra_var.value + self.epsilon) * scale) + bias
      return y.astype(out_dtype)
    y, mean, var = view_batch_norm(x, scale, bias, num_views, self.epsilon, out_dtype,
                                   self.moments)
    if not self.is_initializing():
      count = x.size // (num_views * features)
      mean = lax.stop_gradient(mean).reshape(num_views, features)
      unbiased = lax.stop_gradient(var).reshape(num_views, features) * (count / max(count - 1, 1))
      new_mean, new_var = ra_mean.value, ra_var.value
      for v in range(num_views):
        new_mean = self.momentum * new_mean + (1 - self.momentum) * mean[v]
        new_var = self.momentum * new_var + (1 - self.momentum) * unbiased[v]
      ra_mean.value, ra_var.value = new_mean, new_var
    return y
