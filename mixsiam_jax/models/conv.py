"""Convolutions for flax.linen.Conv: XLA's, or with the weight gradient as shifted matmuls.

Two concerns live here, both about the backward pass:

- ``matmul_weight_grad``: XLA:CPU's backward-filter convolution is effectively
  single-threaded and slow at high resolution with few channels (the CIFAR stem
  and first stage: see docs/performance.md, section 3). The weight gradient is
  computed instead as one ``[C, N*H'*W'] x [N*H'*W', D]`` matmul per kernel tap
  on strided slices of the padded input, which XLA:CPU runs as multithreaded
  matmuls. Same forward pass, input gradient and (up to float rounding) weight
  gradient as XLA's convolution (tests/test_conv.py).
- Mixed precision: with a bfloat16 compute dtype the kernel reaches the
  convolution in float32 (see models/precision.py), is cast to bfloat16 for the
  forward and input-gradient convolutions, and its gradient is returned in
  float32, summed over the devices in float32. Inside a mesh context (the train
  step is traced in one: train.jit_train_step) each device computes its partial
  weight gradient with a bfloat16 convolution (cuDNN's native bf16 kernel), casts
  it to float32 and all-reduces it over the 'data' axis (shard_map + psum). A
  convolution with bf16 operands and a float32 result, the obvious alternative,
  is no native cuDNN kernel: XLA:GPU converts both operands to float32 and keeps
  those copies alive, 11 GiB more for ResNet-50 at 128 per H100
  (docs/performance.md, section 7). Without a mesh context nothing says where
  XLA will sum, so the weight gradient is that float32-output convolution, whose
  sums are float32 wherever XLA puts them.

``conv_function`` picks the function for an implementation and a compute dtype.
"""
import functools
from typing import Callable, Tuple

import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from mixsiam_jax.sharding import DATA_AXIS

CONV_IMPLS = ("xla", "matmul_weight_grad")
_NHWC = ("NHWC", "HWIO", "NHWC")
# The weight gradient as a convolution of the input with the output gradient: the
# batch axis N is contracted (it plays the input-feature role), input channels C
# play the batch role and come out in the kernel's input-channel position.
_WEIGHT_GRAD_DIMS = ("CHWN", "IHWO", "HWNC")


def _as_pairs(padding) -> Tuple[Tuple[int, int], ...]:
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def _forward(x, kernel, strides, padding, precision):
  return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_NHWC,
                                  precision=precision)


def _taps_weight_grad(x, grad, kernel_shape, strides, padding, precision, out_dtype):
  """dL/dW as one [C, K] x [K, D] matmul per tap, K = N * H' * W'."""
  kh, kw = kernel_shape[0], kernel_shape[1]
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
    return None, jnp.einsum("kc,kd->cd", window_rows, grad_rows, precision=precision,
                            preferred_element_type=out_dtype)

  _, taps = lax.scan(tap, None, jnp.arange(kh * kw))
  return taps.reshape(kernel_shape)


def _xla_weight_grad(x, grad, kernel_shape, strides, padding, precision, out_dtype):
  """dL/dW as XLA's backward-filter convolution, accumulated and returned in ``out_dtype``."""
  pads = []
  for axis, (lo, _) in enumerate(padding):
    size, out_size, k, s = x.shape[1 + axis], grad.shape[1 + axis], kernel_shape[axis], strides[axis]
    # High padding that makes the output exactly k taps long (may be negative).
    pads.append((lo, s * (out_size - 1) + k - size - lo))
  return lax.conv_general_dilated(x, grad, (1, 1), pads, rhs_dilation=strides,
                                  dimension_numbers=_WEIGHT_GRAD_DIMS, precision=precision,
                                  preferred_element_type=out_dtype)


def _summed_weight_grad(x, grad, kernel_shape, strides, padding, precision, out_dtype):
  """dL/dW from bf16 partials: one per device in the operands' dtype, cast, summed in ``out_dtype``.

  Needs the mesh of the context (jax.sharding.get_abstract_mesh) to place the sum;
  without one it is ``_xla_weight_grad`` in ``out_dtype`` (see the module docstring).
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or DATA_AXIS not in mesh.axis_names:
    return _xla_weight_grad(x, grad, kernel_shape, strides, padding, precision, out_dtype)
  replicas = mesh.shape[DATA_AXIS]

  def partial_sum(x, grad):
    low = _xla_weight_grad(x, grad, kernel_shape, strides, padding, precision, x.dtype)
    wide = low.astype(out_dtype)
    return lax.psum(wide, DATA_AXIS) if replicas > 1 else wide

  if replicas == 1:
    return partial_sum(x, grad)
  # The batch is sharded over 'data': each device convolves its own rows, and the
  # psum is the only cross-device sum, in out_dtype (float32).
  return jax.shard_map(partial_sum, mesh=mesh, in_specs=(P(DATA_AXIS), P(DATA_AXIS)),
                       out_specs=P())(x, grad)


_WEIGHT_GRADS = {"matmul_weight_grad": _taps_weight_grad, "xla": _summed_weight_grad}


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv(x, kernel, strides, padding, precision, weight_grad):
  return _forward(x, kernel.astype(x.dtype), strides, padding, precision)


def _conv_fwd(x, kernel, strides, padding, precision, weight_grad):
  return _conv(x, kernel, strides, padding, precision, weight_grad), (x, kernel)


def _conv_bwd(strides, padding, precision, weight_grad, residuals, grad):
  x, kernel = residuals
  # Input gradient: XLA's own transposed convolution (fast on every backend).
  low = kernel.astype(x.dtype)
  _, input_vjp = jax.vjp(lambda v: _forward(v, low, strides, padding, precision), x)
  (dx,) = input_vjp(grad)
  dw = _WEIGHT_GRADS[weight_grad](x, grad, kernel.shape, strides, padding, precision,
                                  kernel.dtype)
  return dx, dw.astype(kernel.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def _custom_conv(weight_grad: str) -> Callable:
  """``lax.conv_general_dilated``'s signature, the weight gradient from ``_WEIGHT_GRADS``."""

  def conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
           dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
    if isinstance(padding, str) and padding == "VALID" and rhs.dtype != lhs.dtype:
      # Mixed precision must reach the custom VJP (float32 weight gradient); with
      # equal dtypes 'VALID' keeps going to XLA's convolution, as it always has.
      padding = ((0, 0),) * (lhs.ndim - 2)
    dims = dimension_numbers
    if isinstance(dims, lax.ConvDimensionNumbers):
      nhwc = dims == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
    else:
      nhwc = dims is not None and tuple(dims) == _NHWC
    plain = (nhwc and lhs.ndim == 4 and feature_group_count == 1 and not kwargs
             and not isinstance(padding, str)
             and all(d in (None, 1) for d in (lhs_dilation or ()) + (rhs_dilation or ())))
    if not plain:
      return lax.conv_general_dilated(lhs, rhs.astype(lhs.dtype), window_strides, padding,
                                      lhs_dilation, rhs_dilation, dimension_numbers,
                                      feature_group_count, precision=precision, **kwargs)
    return _conv(lhs, rhs, tuple(int(s) for s in window_strides), _as_pairs(padding), precision,
                 weight_grad)

  return conv


def conv_matmul_weight_grad(lhs, rhs, window_strides, padding, lhs_dilation=None,
                            rhs_dilation=None, dimension_numbers=None,
                            feature_group_count=1, precision=None, **kwargs):
  """``lax.conv_general_dilated`` with the weight gradient as per-tap matmuls.

  Handles what the ResNets here use: NHWC inputs, HWIO kernels, explicit
  padding, no dilation, no groups; anything else goes to
  ``lax.conv_general_dilated`` unchanged. The kernel may be of a wider dtype
  than the input (float32 parameters, bfloat16 compute): it is cast to the
  input's dtype, and its gradient comes back in its own dtype.

  Args:
    lhs: input [N, H, W, C].
    rhs: kernel [KH, KW, C, D].
    window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
      feature_group_count, precision, **kwargs: as in ``lax.conv_general_dilated``.

  Returns:
    The convolution [N, H', W', D], equal to ``lax.conv_general_dilated``'s.
  """
  return _custom_conv("matmul_weight_grad")(
      lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
      feature_group_count, precision, **kwargs)


def conv_wide_weight_grad(lhs, rhs, window_strides, padding, lhs_dilation=None,
                          rhs_dilation=None, dimension_numbers=None,
                          feature_group_count=1, precision=None, **kwargs):
  """XLA's convolution for a low-precision input and a float32 kernel, float32 weight gradient.

  Forward and input gradient are XLA's convolutions in the input's dtype. The
  weight gradient comes back in float32 and its cross-device sum is float32: in a
  mesh context, per-device partials from XLA's backward-filter convolution in the
  input's dtype, cast to float32 and summed over the 'data' axis; without one,
  XLA's backward-filter convolution with float32 accumulation and output.

  Args and Returns: as ``conv_matmul_weight_grad``.
  """
  return _custom_conv("xla")(
      lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
      feature_group_count, precision, **kwargs)


def conv_function(conv_impl: str, dtype) -> Callable:
  """The convolution function for ``flax.linen.Conv(conv_general_dilated=...)``.

  Args:
    conv_impl: 'xla' or 'matmul_weight_grad' (already resolved for the platform;
      'auto' is decided by the caller from the mesh's devices).
    dtype: the compute dtype. Below float32 the kernel is expected in float32
      (models/precision.py) and its gradient is returned in float32.

  Returns:
    A function with the signature of ``lax.conv_general_dilated``.

  Raises:
    ValueError: for an unknown ``conv_impl``.
  """
  if conv_impl not in CONV_IMPLS:
    raise ValueError(f"model.conv_impl={conv_impl!r} must be one of {CONV_IMPLS} here "
                     "('auto' is resolved from the mesh's platform before the model is built).")
  if conv_impl == "matmul_weight_grad":
    return conv_matmul_weight_grad
  if jnp.dtype(dtype) == jnp.float32:
    return lax.conv_general_dilated
  return conv_wide_weight_grad
