"""PyTorch's default initialisers, so that training starts where the official code does."""
import jax
import jax.numpy as jnp
import flax.linen as nn

# torchvision ResNet: kaiming_normal_(mode='fan_out', nonlinearity='relu'), untruncated.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# torch.nn.Linear weight: kaiming_uniform_(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
dense_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def dense_bias_init(fan_in: int):
  """Returns torch.nn.Linear's bias initialiser U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

  Args:
    fan_in: number of input features of the layer.

  Returns:
    An initialiser ``(key, shape, dtype) -> array``.
  """
  bound = 1.0 / jnp.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init
