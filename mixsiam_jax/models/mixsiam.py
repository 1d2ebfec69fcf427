"""The MixSiam network: backbone + projector (= encoder f) and predictor h."""
from typing import Any, Dict

import flax.linen as nn
import jax
import jax.numpy as jnp

from mixsiam_jax.models.heads import Predictor, Projector
from mixsiam_jax.models.resnet import ResNet, check_resnet_options

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class MixSiamNetwork(nn.Module):
  """Encoder f (ResNet + projector) and predictor h applied to a batch of views.

  Parameters live under 'backbone', 'projector' and 'predictor'.
  """
  depth: int = 50
  width: int = 64
  stem: str = "imagenet"
  projector_layers: int = 3
  projector_hidden_dim: int = 2048
  projector_dim: int = 2048
  predictor_hidden_dim: int = 512
  dtype: Any = jnp.float32

  def setup(self):
    self.backbone = ResNet(self.depth, self.width, self.stem, self.dtype)
    self.projector = Projector(self.projector_hidden_dim, self.projector_dim,
                               self.projector_layers, self.dtype)
    self.predictor = Predictor(self.predictor_hidden_dim, self.projector_dim, self.dtype)

  def __call__(self, views: jax.Array, train: bool = True) -> Dict[str, jax.Array]:
    """Runs f and h on every view; BatchNorm statistics are kept per view.

    Args:
      views: normalised images [B, V, H, W, 3] (V views of B examples).
      train: batch statistics (True) or running statistics (False).

    Returns:
      {'features': [B, V, F] pooled backbone features, 'z': [B, V, D] projections,
       'p': [B, V, D] predictions}, all float32.
    """
    batch, num_views = views.shape[:2]
    x = views.reshape((batch * num_views,) + views.shape[2:])
    features = self.backbone(x, train, num_views)
    z = self.projector(features, train, num_views)
    p = self.predictor(z, train, num_views)
    unflat = lambda a: a.reshape((batch, num_views) + a.shape[1:])
    return {"features": unflat(features), "z": unflat(z), "p": unflat(p)}

  def embed(self, images: jax.Array) -> jax.Array:
    """Pooled backbone features [N, F] of images [N, H, W, 3] in inference mode."""
    return self.backbone(images, False, 1)


def create_network(*, depth: int, width: int, stem: str, projector_layers: int,
                   projector_hidden_dim: int, projector_dim: int, predictor_hidden_dim: int,
                   dtype: str = "float32") -> MixSiamNetwork:
  """Builds the network after checking every option.

  Args:
    depth, width, stem: ResNet options (see ResNet).
    projector_layers, projector_hidden_dim, projector_dim: projector shape.
    predictor_hidden_dim: predictor bottleneck width.
    dtype: 'float32', 'bfloat16' or 'float16' compute dtype.

  Returns:
    An (unbound) MixSiamNetwork.

  Raises:
    ValueError: naming the first invalid option.
  """
  check_resnet_options(depth, width, stem)
  if dtype not in DTYPES:
    raise ValueError(f"model.dtype={dtype!r} must be one of {sorted(DTYPES)}.")
  for name, value in (("projector_layers", projector_layers),
                      ("projector_hidden_dim", projector_hidden_dim),
                      ("projector_dim", projector_dim),
                      ("predictor_hidden_dim", predictor_hidden_dim)):
    if not (isinstance(value, int) and value > 0):
      raise ValueError(f"model.{name}={value!r} must be a positive integer.")
  return MixSiamNetwork(depth=depth, width=width, stem=stem, projector_layers=projector_layers,
                        projector_hidden_dim=projector_hidden_dim, projector_dim=projector_dim,
                        predictor_hidden_dim=predictor_hidden_dim, dtype=DTYPES[dtype])
