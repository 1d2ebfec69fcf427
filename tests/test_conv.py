"""Tests of models/conv.py: the convolution with per-tap matmul weight gradients."""
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mixsiam_jax.models import conv

NHWC = ("NHWC", "HWIO", "NHWC")


def _weight_grad_reference(x, grad, kernel_shape, strides, padding):
  """float64 dL/dW[i, j, c, d] = sum_{n,h,w} xpad[n, h*sh + i, w*sw + j, c] g[n, h, w, d]."""
  x = np.asarray(x, np.float64)
  grad = np.asarray(grad, np.float64)
  xp = np.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
  (sh, sw), (_, out_h, out_w, _) = strides, grad.shape
  dw = np.zeros(kernel_shape)
  for i in range(kernel_shape[0]):
    for j in range(kernel_shape[1]):
      window = xp[:, i:i + sh * out_h:sh, j:j + sw * out_w:sw, :][:, :out_h, :out_w]
      dw[i, j] = np.einsum("nhwc,nhwd->cd", window, grad)
  return dw


@pytest.mark.parametrize("kernel,stride,padding,hw", [
    (3, 1, ((1, 1), (1, 1)), (9, 9)),
    (3, 2, ((1, 1), (1, 1)), (9, 8)),     # odd and even sides with stride 2
    (7, 2, ((3, 3), (3, 3)), (16, 13)),   # the ImageNet stem
    (1, 2, ((0, 0), (0, 0)), (8, 8)),     # the strided 1x1 shortcut
    (1, 1, ((0, 0), (0, 0)), (5, 7)),
    (3, 1, ((0, 2), (1, 0)), (6, 6)),     # asymmetric padding
])
def test_same_output_and_gradients_as_lax(kernel, stride, padding, hw):
  rng = np.random.default_rng(kernel * 10 + stride)
  x = jnp.asarray(rng.normal(size=(3,) + hw + (4,)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(kernel, kernel, 4, 5)), jnp.float32)
  strides = (stride, stride)

  def run(fn):
    y, vjp = jax.vjp(lambda a, b: fn(a, b, strides, padding, dimension_numbers=NHWC), x, w)
    grad = jnp.asarray(np.random.default_rng(1).normal(size=y.shape), jnp.float32)
    return y, grad, vjp(grad)

  y_ref, grad, (dx_ref, dw_ref) = run(lax.conv_general_dilated)
  y, grad2, (dx, dw) = run(conv.conv_matmul_weight_grad)
  np.testing.assert_array_equal(y, y_ref)  # Same forward op.
  np.testing.assert_array_equal(dx, dx_ref)  # Same input-gradient op.
  ref = _weight_grad_reference(x, grad, w.shape, strides, padding)
  # float32 sums of <= 3 * 16 * 13 products of unit normals against float64: 1e-4 relative.
  np.testing.assert_allclose(dw, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
  np.testing.assert_allclose(dw_ref, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_unsupported_arguments_fall_back_to_lax():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 4)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32)
  for kwargs in (dict(padding="SAME", feature_group_count=2),
                 dict(padding=((1, 1), (1, 1)), rhs_dilation=(2, 2), feature_group_count=2)):
    f = lambda fn, a, b: jnp.sum(fn(a, b, (1, 1), dimension_numbers=NHWC, **kwargs) ** 2)
    np.testing.assert_allclose(jax.grad(f, argnums=2)(conv.conv_matmul_weight_grad, x, w),
                               jax.grad(f, argnums=2)(lax.conv_general_dilated, x, w), rtol=1e-6)


@pytest.mark.parametrize("kernel,stride,padding,hw", [
    (3, 1, ((1, 1), (1, 1)), (9, 9)),
    (3, 2, ((1, 1), (1, 1)), (9, 8)),
    (7, 2, ((3, 3), (3, 3)), (16, 13)),
    (1, 2, ((0, 0), (0, 0)), (9, 8)),     # strided 1x1: the last row/column is never read
    (3, 1, ((0, 2), (1, 0)), (6, 6)),
])
def test_xla_weight_grad_in_float32_matches_lax(kernel, stride, padding, hw):
  rng = np.random.default_rng(kernel + stride)
  x = jnp.asarray(rng.normal(size=(3,) + hw + (4,)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(kernel, kernel, 4, 5)), jnp.float32)
  strides = (stride, stride)
  y, vjp = jax.vjp(lambda a, b: lax.conv_general_dilated(a, b, strides, padding,
                                                         dimension_numbers=NHWC), x, w)
  grad = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
  _, dw_ref = vjp(grad)
  # The float32 path of 'xla' is lax's own convolution; the custom VJP's weight
  # gradient (used below float32) must give the same numbers for float32 operands.
  y2, vjp2 = jax.vjp(lambda a, b: conv.conv_wide_weight_grad(a, b, strides, padding,
                                                             dimension_numbers=NHWC), x, w)
  np.testing.assert_array_equal(y2, y)
  np.testing.assert_allclose(vjp2(grad)[1], dw_ref, rtol=1e-5, atol=1e-5 * np.abs(dw_ref).max())


@pytest.mark.parametrize("conv_impl", conv.CONV_IMPLS)
def test_bfloat16_compute_gives_float32_weight_gradient(conv_impl):
  """bf16 activations, f32 kernel: bf16 forward and input gradient, f32-accumulated dL/dW."""
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(8, 12, 12, 16)), jnp.bfloat16)
  w = jnp.asarray(rng.normal(size=(3, 3, 16, 8)), jnp.float32)
  strides, padding = (2, 2), ((1, 1), (1, 1))
  fn = conv.conv_function(conv_impl, jnp.bfloat16)
  y, vjp = jax.vjp(lambda a, b: fn(a, b, strides, padding, dimension_numbers=NHWC), x, w)
  assert y.dtype == jnp.bfloat16
  grad = jnp.asarray(rng.normal(size=y.shape), jnp.bfloat16)
  dx, dw = vjp(grad)
  assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.float32
  low = w.astype(jnp.bfloat16)
  y_ref, vjp_ref = jax.vjp(lambda a: lax.conv_general_dilated(a, low, strides, padding,
                                                              dimension_numbers=NHWC), x)
  np.testing.assert_array_equal(y, y_ref)
  np.testing.assert_array_equal(dx, vjp_ref(grad)[0])
  ref = _weight_grad_reference(x, grad, w.shape, strides, padding)
  # A bfloat16 result would be off by up to 2^-9 relative (~2e-3); float32 sums of
  # 8 * 6 * 6 exact bf16 products agree with float64 to ~1e-6.
  np.testing.assert_allclose(dw, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


def _sharded_weight_grad(x, w, grad, mesh, strides, padding):
  """dL/dW of conv_wide_weight_grad under jit, batch sharded on ``mesh``, traced in its context.

  Returns:
    (dL/dW, the jaxpr's text, the compiled HLO's text).
  """
  data = NamedSharding(mesh, P("data"))

  def weight_grad(x, w, grad):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      _, vjp = jax.vjp(lambda b: conv.conv_wide_weight_grad(x, b, strides, padding,
                                                            dimension_numbers=NHWC), w)
      return vjp(grad)[0]

  fn = jax.jit(weight_grad, in_shardings=(data, NamedSharding(mesh, P()), data))
  jaxpr = str(jax.make_jaxpr(weight_grad)(x, w, grad))
  return fn(x, w, grad), jaxpr, fn.lower(x, w, grad).compile().as_text()


@pytest.mark.parametrize("replicas", [1, 8])
def test_bfloat16_weight_gradient_in_a_mesh_sums_bfloat16_partials_in_float32(replicas):
  """In a mesh context: one bf16 weight gradient per device, cast, then a float32 sum."""
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.normal(size=(16, 12, 12, 16)), jnp.bfloat16)
  w = jnp.asarray(rng.normal(size=(3, 3, 16, 8)), jnp.float32)
  strides, padding = (2, 2), ((1, 1), (1, 1))
  grad = jnp.asarray(rng.normal(size=(16, 6, 6, 8)), jnp.bfloat16)
  mesh = Mesh(np.asarray(jax.devices()[:replicas]), ("data",))
  dw, jaxpr, hlo = _sharded_weight_grad(x, w, grad, mesh, strides, padding)
  assert dw.dtype == jnp.float32
  # The program: a bf16 weight-gradient convolution (no float32 result), its cast,
  # and with several devices a psum (in shard_map) as the only cross-device sum.
  convs = [l for l in jaxpr.splitlines() if "conv_general_dilated[" in l]
  assert any(":bf16[3,3,16,8]" in l.replace(" ", "") for l in convs), convs
  assert ("psum" in jaxpr) == (replicas > 1)
  reduces = [l for l in hlo.splitlines() if " all-reduce(" in l or " all-reduce-start(" in l]
  assert len(reduces) == (replicas > 1) and all("= f32[" in l for l in reduces), reduces
  # Against float64: at most the bf16 rounding of each device's partial (2^-9 relative,
  # bound 2^-8); XLA:CPU keeps excess precision (it folds the cast into the convolution),
  # so here it is closer still.
  rows = len(x) // replicas
  partials = [_weight_grad_reference(x[i * rows:(i + 1) * rows], grad[i * rows:(i + 1) * rows],
                                     w.shape, strides, padding) for i in range(replicas)]
  ref = np.sum(partials, axis=0)
  bound = 2.0**-8 * np.sum(np.abs(partials), axis=0) + 1e-6 * np.abs(ref).max()
  assert np.all(np.abs(np.asarray(dw, np.float64) - ref) <= bound)


def test_conv_function():
  assert conv.conv_function("xla", jnp.float32) is lax.conv_general_dilated
  assert conv.conv_function("matmul_weight_grad", jnp.float32) is conv.conv_matmul_weight_grad
  assert conv.conv_function("xla", jnp.bfloat16) is conv.conv_wide_weight_grad
  assert conv.conv_function("matmul_weight_grad", jnp.bfloat16) is conv.conv_matmul_weight_grad
  for bad in ("auto", "im2col"):
    with pytest.raises(ValueError, match=f"model.conv_impl='{bad}'"):
      conv.conv_function(bad, jnp.float32)
