"""Mixed precision whose parameter gradients, and their cross-device sums, are float32.

Parameters are float32; with a bfloat16 compute dtype flax casts them to
bfloat16 before the matmul or convolution, so the gradient with respect to the
weights is produced in bfloat16, and under jit with a sharded batch XLA
all-reduces it across devices right there, in bfloat16, before the cast back to
float32. Instead, the modules here receive the float32 kernel (``promote_inputs``
casts only the activations), cast it inside an op with a custom VJP, and return
its gradient in float32, summed over devices in float32: ``dense_dot_general``
here accumulates it in float32 (bf16 operands, float32 result: a native cuBLAS
matmul); the convolutions of models/conv.py sum per-device bf16 partials in
float32. The forward and input-gradient computations stay in bfloat16. See
docs/accelerators.md, "Gradient all-reduce".
"""
from typing import Any, Optional

import jax
from jax import lax
import jax.numpy as jnp


def is_reduced(dtype: Any) -> bool:
  """True if ``dtype`` is a compute dtype below float32 (bfloat16, float16)."""
  return jnp.dtype(dtype) != jnp.float32


def promote_inputs(inputs, kernel, bias=None, *, dtype=None, inexact: bool = True):
  """flax's ``promote_dtype`` hook: cast the activations to ``dtype``, keep kernel and bias.

  The kernel goes on in float32 to ``dense_dot_general`` or a convolution of
  models/conv.py, which cast it themselves; a float32 bias makes the addition
  (and its gradient) float32.

  Args:
    inputs, kernel, bias: the module's operands (bias may be None).
    dtype: the compute dtype.
    inexact: unused (flax's signature).

  Returns:
    [inputs cast to dtype, kernel, bias].
  """
  del inexact
  return [jnp.asarray(inputs, dtype), kernel, bias]


@jax.custom_vjp
def _dense(x, kernel):
  return x @ kernel.astype(x.dtype)


def _dense_fwd(x, kernel):
  return _dense(x, kernel), (x, kernel)


def _dense_bwd(residuals, grad):
  x, kernel = residuals
  dx = grad @ kernel.astype(x.dtype).T
  # Contract the (sharded) batch with float32 accumulation and output.
  dw = lax.dot_general(x, grad, (((0,), (0,)), ((), ())), preferred_element_type=kernel.dtype)
  return dx, dw


_dense.defvjp(_dense_fwd, _dense_bwd)


def dense_dot_general(lhs, rhs, dimension_numbers, precision=None,
                      preferred_element_type: Optional[Any] = None, **kwargs):
  """flax Dense's ``dot_general`` for [N, F] activations and a float32 [F, D] kernel.

  Forward and input gradient run in the activations' dtype; the kernel gradient
  is accumulated and returned in the kernel's dtype. Anything but the plain 2-D
  case goes to ``lax.dot_general`` with the kernel cast to the activations' dtype.

  Args:
    lhs: activations [N, F].
    rhs: kernel [F, D].
    dimension_numbers, precision, preferred_element_type, **kwargs: as in
      ``lax.dot_general``.

  Returns:
    lhs @ rhs in the activations' dtype.
  """
  dims = tuple(tuple(tuple(d) for d in part) for part in dimension_numbers)
  if (lhs.ndim == 2 and rhs.ndim == 2 and precision is None and preferred_element_type is None
      and not kwargs and dims == (((1,), (0,)), ((), ()))):
    return _dense(lhs, rhs)
  return lax.dot_general(lhs, rhs.astype(lhs.dtype), dimension_numbers, precision=precision,
                         preferred_element_type=preferred_element_type, **kwargs)
