"""A convolution whose weight gradient is computed as shifted matmuls (for XLA:CPU).

XLA:CPU's backward-filter convolution is effectively single-threaded and slow at
high resolution with few channels (the CIFAR stem and first stage: see
docs/performance.md, section 3). ``conv_matmul_weight_grad`` has the signature of
``lax.conv_general_dilated`` (what ``flax.linen.Conv`` calls), the same forward
pass and input gradient, and computes the weight gradient as one
``[C, N*H'*W'] x [N*H'*W', D]`` matmul per kernel tap on strided slices of the padded
input, which XLA:CPU runs as multithreaded matmuls. Parameters, outputs and
gradients are those of the plain convolution (tests/test_models.py); only the
speed differs, so it is chosen per backend (``conv_for_backend``).
"""
import functools
from typing import Callable, Tuple

import jax
from jax import lax
import jax.numpy as jnp

CONV_IMPLS = ("auto", "xla", "matmul_weight_grad")
_NHWC = ("NHWC", "HWIO", "NHWC")


def _as_pairs(padding) -> Tuple[Tuple[int, int], ...]:
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def _forward(x, kernel, strides, padding, precision):
  return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_NHWC,
                                  precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, kernel, strides, padding, precision):
  return _forward(x, kernel, strides, padding, precision)


def _conv_fwd(x, kernel, strides, padding, precision):
  return _forward(x, kernel, strides, padding, precision), (x, kernel)


def _conv_bwd(strides, padding, precision, residuals, grad):
  x, kernel = residuals
  # Input gradient: XLA's own transposed convolution (fast on every backend).
  _, input_vjp = jax.vjp(lambda v: _forward(v, kernel, strides, padding, precision), x)
  (dx,) = input_vjp(grad)
  kh, kw = kernel.shape[0], kernel.shape[1]
  sh, sw = strides
  out_h, out_w = grad.shape[1], grad.shape[2]
  padded = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
  span_h, span_w = sh * (out_h - 1) + 1, sw * (out_w - 1) + 1

  grad_rows = grad.reshape(-1, grad.shape[3])  # [N * H' * W', D]

  def tap(_, offset):
    # One tap at a time (a loop, not kh * kw unrolled slices) keeps a single
    # window copy alive; the 2-D [N * H' * W', C] operands make XLA:CPU emit one
    # library matmul (a 4-D einsum contracting three axes ran 3x slower).
    window = lax.dynamic_slice(padded, (0, offset // kw, offset % kw, 0),
                               (x.shape[0], span_h, span_w, x.shape[3]))[:, ::sh, ::sw, :]
    window_rows = window.reshape(-1, x.shape[3])
    return None, jnp.einsum("kc,kd->cd", window_rows, grad_rows, precision=precision)

  _, taps = lax.scan(tap, None, jnp.arange(kh * kw))
  return dx, taps.reshape(kernel.shape).astype(kernel.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv_matmul_weight_grad(lhs, rhs, window_strides, padding, lhs_dilation=None,
                            rhs_dilation=None, dimension_numbers=None,
                            feature_group_count=1, precision=None, **kwargs):
  """``lax.conv_general_dilated`` with the weight gradient as per-tap matmuls.

  Handles what the ResNets here use: NHWC inputs, HWIO kernels, explicit
  padding, no dilation, no groups; anything else goes to
  ``lax.conv_general_dilated`` unchanged.

  Args:
    lhs: input [N, H, W, C].
    rhs: kernel [KH, KW, C, D].
    window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
      feature_group_count, precision, **kwargs: as in ``lax.conv_general_dilated``.

  Returns:
    The convolution [N, H', W', D], equal to ``lax.conv_general_dilated``'s.
  """
  dims = dimension_numbers
  if isinstance(dims, lax.ConvDimensionNumbers):
    nhwc = dims == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
  else:
    nhwc = dims is not None and tuple(dims) == _NHWC
  plain = (nhwc and lhs.ndim == 4 and feature_group_count == 1 and not kwargs
           and not isinstance(padding, str)
           and all(d in (None, 1) for d in (lhs_dilation or ()) + (rhs_dilation or ())))
  if not plain:
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                    rhs_dilation, dimension_numbers, feature_group_count,
                                    precision=precision, **kwargs)
  return _conv(lhs, rhs, tuple(int(s) for s in window_strides), _as_pairs(padding), precision)


def conv_for_backend(conv_impl: str, backend: str = "") -> Callable:
  """The convolution function for ``flax.linen.Conv(conv_general_dilated=...)``.

  Args:
    conv_impl: 'xla' (lax.conv_general_dilated), 'matmul_weight_grad', or 'auto'
      (matmul_weight_grad on CPU, where it is faster; xla on GPU/TPU).
    backend: platform name; default ``jax.default_backend()``.

  Returns:
    A function with the signature of ``lax.conv_general_dilated``.
  """
  if conv_impl not in CONV_IMPLS:
    raise ValueError(f"model.conv_impl={conv_impl!r} is not one of {CONV_IMPLS}.")
  if conv_impl == "auto":
    conv_impl = "matmul_weight_grad" if (backend or jax.default_backend()) == "cpu" else "xla"
  return conv_matmul_weight_grad if conv_impl == "matmul_weight_grad" else lax.conv_general_dilated

