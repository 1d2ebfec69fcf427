"""The MixSiam network: backbone + projector (= encoder f) and predictor h."""
from typing import Dict

import flax.linen as nn
import jax
import jax.numpy as jnp

from mixsiam_jax.models.heads import Predictor, Projector
from mixsiam_jax.models.resnet import ResNet
from mixsiam_jax.options.training import ModelOptions

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class MixSiamNetwork(nn.Module):
  """Encoder f (ResNet + projector) and predictor h applied to a batch of views.

  Parameters live under 'backbone', 'projector' and 'predictor', and with
  ``model.num_classes > 0`` an online linear probe under 'online_probe': a
  linear classifier on the stop-gradient pooled features of the first view, so
  it tracks the representation during pretraining without ever changing it.

  Attributes:
    model: the validated model options.
    platform: 'cpu', 'gpu' or 'tpu', the platform of the mesh the network runs
      on; it decides the compute dtype and convolution where the options leave
      them to the platform (ModelOptions.compute_dtype, .conv_implementation),
      never the host's default backend.
  """
  model: ModelOptions
  platform: str

  def setup(self):
    m = self.model
    dtype = DTYPES[m.compute_dtype(self.platform)]
    self.backbone = ResNet(m.depth, m.width, m.stem, dtype, m.remat,
                           m.conv_implementation(self.platform))
    self.projector = Projector(m.projector_hidden_dim, m.projector_dim, m.projector_layers, dtype)
    self.predictor = Predictor(m.predictor_hidden_dim, m.projector_dim, dtype)
    if m.num_classes > 0:
      self.online_probe = nn.Dense(m.num_classes, kernel_init=nn.initializers.normal(0.01),
                                   bias_init=nn.initializers.zeros)

  def __call__(self, views: jax.Array, train: bool = True) -> Dict[str, jax.Array]:
    """Runs f and h on every view; BatchNorm statistics are kept per view.

    Args:
      views: normalised images [B, V, H, W, 3] (V views of B examples).
      train: batch statistics (True) or running statistics (False).

    Returns:
      {'features': [B, V, F] pooled backbone features, 'z': [B, V, D] projections,
       'p': [B, V, D] predictions}, all float32; with num_classes > 0 also
      'probe_logits' [B, num_classes] of the first view.
    """
    batch, num_views = views.shape[:2]
    x = views.reshape((batch * num_views,) + views.shape[2:])
    features = self.backbone(x, train, num_views)
    z = self.projector(features, train, num_views)
    p = self.predictor(z, train, num_views)
    unflat = lambda a: a.reshape((batch, num_views) + a.shape[1:])
    out = {"features": unflat(features), "z": unflat(z), "p": unflat(p)}
    if self.model.num_classes > 0:
      out["probe_logits"] = self.online_probe(jax.lax.stop_gradient(out["features"][:, 0]))
    return out

  def embed(self, images: jax.Array) -> jax.Array:
    """Pooled backbone features [N, F] of images [N, H, W, 3] in inference mode."""
    return self.backbone(images, False, 1)
