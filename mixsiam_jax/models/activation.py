"""ReLU whose derivative is read from its output.

``jax.nn.relu`` differentiates through ``x > 0``, so the backward pass needs
the ReLU's input: a BatchNorm output or a residual sum, which nothing else
needs. XLA then writes that input out in the forward pass as well and keeps it
until the backward pass (in the ResNet-50 step it kept 1.6 GiB of them; see
docs/performance.md, section 7). The output is nonzero exactly where the input
is positive, and the output is kept anyway: it is the next convolution's input,
which that convolution's weight gradient reads.
"""
import jax
import jax.numpy as jnp


@jax.custom_jvp
def relu(x: jax.Array) -> jax.Array:
  """max(x, 0), with the derivative 1 where the output is nonzero and 0 elsewhere.

  Args:
    x: any floating array.

  Returns:
    max(x, 0) in x's dtype; its derivative equals jax.nn.relu's for every
    non-NaN input (0 at x = 0).
  """
  return jnp.maximum(x, jnp.zeros((), x.dtype))


@relu.defjvp
def _relu_jvp(primals, tangents):
  (x,), (tangent,) = primals, tangents
  y = jnp.maximum(x, jnp.zeros((), x.dtype))
  # `y != 0`, not `y > 0`: with `y > 0` the compiled ResNet-50 step still kept every ReLU
  # input, as with jax.nn.relu (XLA can rewrite max(x, 0) > 0 as x > 0).
  return y, jnp.where(y != 0, tangent, jnp.zeros_like(tangent))
