"""models/activation.py's relu: jax.nn.relu's values and derivative, read from the output."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixsiam_jax.models.activation import relu


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_values_and_gradient_equal_jax_relu(dtype):
  x = jnp.asarray(np.random.RandomState(0).randn(64), dtype)
  x = x.at[:8].set(0).at[8:12].set(-0.0)  # the kink: derivative 0, as jax.nn.relu's
  cotangent = jnp.asarray(np.random.RandomState(1).randn(64), dtype)
  y, vjp = jax.vjp(relu, x)
  y_ref, vjp_ref = jax.vjp(jax.nn.relu, x)
  assert y.dtype == dtype
  np.testing.assert_array_equal(np.asarray(y, np.float32), np.maximum(np.asarray(x, np.float32), 0))
  np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(y_ref, np.float32))
  (grad,), (grad_ref,) = vjp(cotangent), vjp_ref(cotangent)
  expected = np.where(np.asarray(x, np.float32) > 0, np.asarray(cotangent, np.float32), 0)
  np.testing.assert_array_equal(np.asarray(grad, np.float32), expected)
  np.testing.assert_array_equal(np.asarray(grad, np.float32), np.asarray(grad_ref, np.float32))


def test_second_derivative_is_zero_like_jax_relu():
  x = jnp.linspace(-2.0, 2.0, 9)
  second = jax.vmap(jax.grad(jax.grad(relu)))(x)
  np.testing.assert_array_equal(second, jax.vmap(jax.grad(jax.grad(jax.nn.relu)))(x))
