"""Per-view BatchNorm (models/norm.py): statistics, precision, gradients, sharding.

References are independent of the code under test: NumPy two-pass statistics in
float64, and jax.vjp of the two-pass formula in float64.
"""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from mixsiam_jax import sharding
from mixsiam_jax.models import ViewBatchNorm, norm

# The float32 variance of channels whose mean is 1e3 to 1e4 times their spread,
# against float64 (measured on 2026-12-06: 6e-6 at most). The shifted sums are of
# the order of the spread, so float32 rounding of a few thousand such terms stays
# near 1e-5; E[x^2] - E[x]^2 loses (mean / spread)^2 * 2^-24, 0.06 to 6 here.
VAR_RTOL = 5e-5


def one_pass_moments(x, axes):
  """E[x^2] - E[x]^2, the one-pass form of flax's nn.BatchNorm (use_fast_variance)."""
  mean = x.mean(axes, keepdims=True)
  return mean, jnp.maximum(jnp.square(x).mean(axes, keepdims=True) - jnp.square(mean), 0.0)


def rows(x):
  """[B, V, ...] -> batch-major rows [B * V, ...]."""
  return x.reshape((-1,) + x.shape[2:])


def per_view_stats(x, num_views, dtype, moments=norm.shifted_moments):
  """view_batch_norm's (mean, var) of batch-major rows, as [V, C] float64."""
  channels = x.shape[-1]
  run = jax.jit(lambda x: norm.view_batch_norm(
      x, jnp.ones(channels), jnp.zeros(channels), num_views, 1e-5, dtype, moments))
  _, mean, var = run(x)
  return (np.asarray(mean, np.float64).reshape(num_views, channels),
          np.asarray(var, np.float64).reshape(num_views, channels))


def relative_error(value, reference):
  return np.max(np.abs(value / reference - 1))


def test_view_batchnorm_matches_numpy_per_view():
  rs = np.random.RandomState(0)
  batch, views, feats = 5, 3, 4
  x = rs.randn(batch, views, feats) * np.arange(1, views + 1)[None, :, None] + np.arange(views)[None, :, None]
  bn = ViewBatchNorm()
  variables = bn.init(jax.random.key(0), jnp.zeros((views, feats)), train=True, num_views=views)
  y, new = bn.apply(variables, jnp.asarray(rows(x), jnp.float32), train=True,
                    num_views=views, mutable=["batch_stats"])
  y = np.asarray(y).reshape(batch, views, feats)
  mean, var = x.mean(0), x.var(0)
  np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5), atol=1e-5)
  # torch semantics: unbiased variance; views update the running stats in order.
  rm, rv = np.zeros(feats), np.ones(feats)
  for v in range(views):
    rm = 0.9 * rm + 0.1 * mean[v]
    rv = 0.9 * rv + 0.1 * x[:, v].var(0, ddof=1)
  np.testing.assert_allclose(new["batch_stats"]["mean"], rm, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new["batch_stats"]["var"], rv, rtol=1e-5, atol=1e-6)
  # Inference uses the running statistics.
  out = bn.apply({**variables, "batch_stats": new["batch_stats"]}, jnp.asarray(x[:, 0], jnp.float32), train=False)
  np.testing.assert_allclose(out, (x[:, 0] - rm) / np.sqrt(rv + 1e-5), atol=1e-5)


def test_float32_variance_of_large_mean_channels_matches_float64_two_pass():
  rs = np.random.RandomState(0)
  batch, views, size = 16, 3, 8
  ratio = np.array([1e3, 3e3, 1e4, 1e3, 3e3, 1e4])  # mean / spread of each channel
  spread = np.array([1.0, 0.5, 2.0, 1e-2, 3.0, 0.1])
  mean = ratio * spread * np.array([1, -1, 1, 1, -1, 1])
  x = (mean + spread * rs.randn(batch, views, size, size, 6)).astype(np.float32)
  reference = x.astype(np.float64).var(axis=(0, 2, 3))
  ref_mean = x.astype(np.float64).mean(axis=(0, 2, 3))
  got_mean, got_var = per_view_stats(jnp.asarray(rows(x)), views, jnp.float32)
  assert relative_error(got_var, reference) < VAR_RTOL
  np.testing.assert_allclose(got_mean, ref_mean, rtol=1e-6)
  # The one-pass form misses the same variances by more than their size.
  _, one_pass = per_view_stats(jnp.asarray(rows(x)), views, jnp.float32, one_pass_moments)
  assert relative_error(one_pass, reference) > 1


def large_mean_bfloat16_channels(rs, batch, views, size):
  """bfloat16 channels of mean 300 or 500 whose spread is one ulp (2) on a few values.

  bfloat16 keeps 8 significant bits, so a spread of 1e-3 to 1e-4 of the mean
  exists only as rare values one ulp above the rest: k of the n values of each
  view and channel. Returns ([B, V, H, W, 4] bfloat16, [V, 4] mean / spread).
  """
  n = batch * size * size
  x = np.zeros((batch, views, size, size, 4))
  for c, (base, k) in enumerate([(300.0, 20), (300.0, 3), (300.0, 1), (500.0, 1)]):
    for v in range(views):
      values = np.full(n, base)
      values[:k] = base + 2
      rs.shuffle(values)
      x[:, v, :, :, c] = values.reshape(batch, size, size)
  return jnp.asarray(x, jnp.bfloat16), x.mean(axis=(0, 2, 3)) / x.std(axis=(0, 2, 3))


def test_bfloat16_step_variance_of_large_mean_channels_matches_float64_two_pass():
  batch, views, size = 16, 3, 8
  x, ratio = large_mean_bfloat16_channels(np.random.RandomState(1), batch, views, size)
  assert np.all((ratio > 1e3) & (ratio < 1e4)), ratio
  # The bf16 step's BN: bfloat16 in and out, statistics in float32.
  values = np.asarray(x.astype(jnp.float32), np.float64)
  reference = values.var(axis=(0, 2, 3))
  _, got_var = per_view_stats(rows(x), views, jnp.bfloat16)
  assert relative_error(got_var, reference) < VAR_RTOL
  _, one_pass = per_view_stats(rows(x), views, jnp.bfloat16, one_pass_moments)
  assert relative_error(one_pass, reference) > 0.5
  # The normalised output, within bfloat16's rounding (values up to ~32).
  y = norm.view_batch_norm(rows(x), jnp.ones(4), jnp.zeros(4), views, 1e-5, jnp.bfloat16)[0]
  expected = (values - values.mean(axis=(0, 2, 3), keepdims=True)) / np.sqrt(
      values.var(axis=(0, 2, 3), keepdims=True) + 1e-5)
  got = np.asarray(y.astype(jnp.float32)).reshape(values.shape)
  np.testing.assert_allclose(got, expected, rtol=2**-8, atol=1e-3)


def reference_batch_norm(x, scale, bias, num_views, epsilon):
  """float64 two-pass per-view BatchNorm, (y, mean, var), for jax.vjp."""
  grouped = x.reshape((-1, num_views) + x.shape[1:])
  axes = (0,) + tuple(range(2, grouped.ndim - 1))
  mean = grouped.mean(axes, keepdims=True)
  var = jnp.square(grouped - mean).mean(axes, keepdims=True)
  y = (grouped - mean) / jnp.sqrt(var + epsilon) * scale + bias
  return y.reshape(x.shape), mean, var


@pytest.mark.parametrize("shape,num_views", [((6 * 3, 5, 5, 4), 3), ((8 * 2, 7), 2)])
def test_vjp_matches_float64_autodiff(shape, num_views):
  rs = np.random.RandomState(2)
  x = rs.randn(*shape) * 2 + 3
  scale, bias = rs.rand(shape[-1]) + 0.5, rs.randn(shape[-1])
  outs = jax.eval_shape(lambda: reference_batch_norm(
      jnp.zeros(shape), jnp.ones(shape[-1]), jnp.ones(shape[-1]), num_views, 1e-5))
  # Cotangents for the statistics too: the running averages never feed the loss,
  # but the VJP must stay right for any use of them.
  cotangents = [rs.randn(*o.shape) for o in outs]
  with jax.enable_x64(True):
    _, ref_vjp = jax.vjp(lambda *a: reference_batch_norm(*a, num_views, 1e-5),
                         *(jnp.asarray(a, jnp.float64) for a in (x, scale, bias)))
    expected = ref_vjp(tuple(jnp.asarray(c, jnp.float64) for c in cotangents))
  _, vjp = jax.vjp(lambda *a: norm.view_batch_norm(*a, num_views, 1e-5, jnp.float32),
                   *(jnp.asarray(a, jnp.float32) for a in (x, scale, bias)))
  got = jax.jit(vjp)(tuple(jnp.asarray(c, jnp.float32) for c in cotangents))
  for name, g, e in zip(("x", "scale", "bias"), got, expected):
    e = np.asarray(e)
    # float32 against float64: sums of <= 75 terms of order 1, 1e-5 of the largest value.
    np.testing.assert_allclose(g, e, rtol=0, atol=1e-5 * np.abs(e).max(), err_msg=name)


def test_float64_activations_keep_float64_statistics_and_gradients():
  rs = np.random.RandomState(3)
  x, scale, bias = rs.randn(12, 3, 3, 5) + 1e4, rs.rand(5) + 0.5, rs.randn(5)
  cotangent = rs.randn(12, 3, 3, 5)
  with jax.enable_x64(True):
    args = tuple(jnp.asarray(a, jnp.float64) for a in (x, scale, bias))
    (y, mean, var), vjp = jax.vjp(lambda *a: norm.view_batch_norm(*a, 3, 1e-5, jnp.float64),
                                  *args)
    _, ref_vjp = jax.vjp(lambda *a: reference_batch_norm(*a, 3, 1e-5), *args)
    zeros = (jnp.zeros_like(mean), jnp.zeros_like(var))
    got, expected = vjp((jnp.asarray(cotangent),) + zeros), ref_vjp((jnp.asarray(cotangent),) + zeros)
  assert y.dtype == mean.dtype == var.dtype == jnp.float64
  grouped = x.reshape(4, 3, 3, 3, 5)
  np.testing.assert_allclose(np.asarray(var).reshape(3, 5), grouped.var(axis=(0, 2, 3)), rtol=1e-10)
  for g, e in zip(got, expected):
    np.testing.assert_allclose(g, e, rtol=0, atol=1e-9 * np.abs(e).max())


def test_sharded_batch_gives_the_same_statistics_and_moves_no_activations():
  mesh = sharding.create_mesh(jax.devices()[:8])
  rs = np.random.RandomState(4)
  x = jnp.asarray(rs.randn(16 * 3, 4, 4, 6) * 3 + 50, jnp.float32)
  scale, bias = jnp.asarray(rs.rand(6) + 0.5, jnp.float32), jnp.zeros(6)

  def loss(x, scale):
    y, mean, var = norm.view_batch_norm(x, scale, bias, 3, 1e-5, jnp.float32)
    return jnp.sum(jnp.sin(y)), (mean, var)

  step = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
  single = jax.jit(step)(x, scale)
  data, rep = NamedSharding(mesh, P(sharding.DATA_AXIS)), NamedSharding(mesh, P())
  sharded = jax.jit(step, in_shardings=(data, rep))
  compiled = sharded.lower(x, scale).compile()
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
               compiled(jax.device_put(x, data), jax.device_put(scale, rep)), single)
  # Devices exchange only per-view, per-channel partial statistics (at most
  # devices x views x channels values each), never rows of activations.
  collectives = re.findall(r"= \(?([^=]*?)\)? (?:all-gather|all-reduce|all-to-all|reduce-scatter|"
                           r"collective-permute)(?:-start)?\(", compiled.as_text())
  assert collectives  # The statistics of the global batch need some.
  for shape in collectives:
    for dims in re.findall(r"\[([\d,]*)\]", shape):
      assert np.prod([int(d) for d in dims.split(",") if d]) <= 8 * 3 * 6, shape
