"""Tests of models/conv.py: the convolution with per-tap matmul weight gradients."""
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

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


def test_conv_for_backend():
  assert conv.conv_for_backend("auto", "cpu") is conv.conv_matmul_weight_grad
  assert conv.conv_for_backend("auto", "gpu") is lax.conv_general_dilated
  assert conv.conv_for_backend("auto", "tpu") is lax.conv_general_dilated
  assert conv.conv_for_backend("xla", "cpu") is lax.conv_general_dilated
  assert conv.conv_for_backend("matmul_weight_grad", "tpu") is conv.conv_matmul_weight_grad
  with pytest.raises(ValueError, match="model.conv_impl='im2col'"):
    conv.conv_for_backend("im2col")
