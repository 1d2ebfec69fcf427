"""The MixSiam network: backbone + projector (= encoder f) and predictor h."""
from typing import Any, Dict

import flax.linen as nn
import jax
import jax.numpy as jnp

from mixsiam_jax.models.conv import CONV_IMPLS
from mixsiam_jax.models.heads import Predictor, Projector
from mixsiam_jax.models.resnet import ResNet, check_resnet_options

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class MixSiamNetwork(nn.Module):
  """Encoder f (ResNet + projector) and predictor h applied to a batch of views.

  Parameters live under 'backbone', 'projector' and 'predictor', and with
  ``num_classes > 0`` an online linear probe under 'online_probe': a linear
  classifier on the stop-gradient pooled features of the first view, so it
  tracks the representation during pretraining without ever changing it.
  """
  depth: int = 50
  width: int = 64
  stem: str = "imagenet"
  projector_layers: int = 3
  projector_hidden_dim: int = 2048
  projector_dim: int = 2048
  predictor_hidden_dim: int = 512
  num_classes: int = 0
  dtype: Any = jnp.float32
  remat: bool = False
  conv_impl: str = "xla"

  def setup(self):
    self.backbone = ResNet(self.depth, self.width, self.stem, self.dtype, self.remat, self.conv_impl)
    self.projector = Projector(self.projector_hidden_dim, self.projector_dim,
                               self.projector_layers, self.dtype)
    self.predictor = Predictor(self.predictor_hidden_dim, self.projector_dim, self.dtype)
    if self.num_classes > 0:
      self.online_probe = nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01),
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
    if self.num_classes > 0:
      out["probe_logits"] = self.online_probe(jax.lax.stop_gradient(out["features"][:, 0]))
    return out

  def embed(self, images: jax.Array) -> jax.Array:
    """Pooled backbone features [N, F] of images [N, H, W, 3] in inference mode."""
    return self.backbone(images, False, 1)


def create_network(*, depth: int, width: int, stem: str, projector_layers: int,
                   projector_hidden_dim: int, projector_dim: int, predictor_hidden_dim: int,
                   dtype: str = "float32", num_classes: int = 0,
                   remat: bool = False, conv_impl: str = "xla") -> MixSiamNetwork:
  """Builds the network after checking every option.

  Nothing here depends on the host: a config's platform-dependent choices
  ('auto' dtype and convolution) are resolved by the caller from the devices of
  the mesh the network will run on (see options.ModelOptions).

  Args:
    depth, width, stem: ResNet options (see ResNet).
    projector_layers, projector_hidden_dim, projector_dim: projector shape.
    predictor_hidden_dim: predictor bottleneck width.
    dtype: 'float32', 'bfloat16' or 'float16' compute dtype (parameters and
      their gradients stay float32).
    num_classes: classes of the online linear probe (0: no probe).
    remat: recompute residual blocks in the backward pass (see ResNet.remat).
    conv_impl: 'xla' or 'matmul_weight_grad' (see ResNet.conv_impl).

  Returns:
    An (unbound) MixSiamNetwork.

  Raises:
    ValueError: naming the first invalid option.
  """
  check_resnet_options(depth, width, stem)
  if dtype not in DTYPES:
    raise ValueError(f"model dtype={dtype!r} must be one of {sorted(DTYPES)}; 'auto' is "
                     "resolved from the mesh's platform (ModelOptions.compute_dtype) first.")
  for name, value in (("projector_layers", projector_layers),
                      ("projector_hidden_dim", projector_hidden_dim),
                      ("projector_dim", projector_dim),
                      ("predictor_hidden_dim", predictor_hidden_dim)):
    if not (isinstance(value, int) and value > 0):
      raise ValueError(f"model.{name}={value!r} must be a positive integer.")
  if not isinstance(remat, bool):
    raise ValueError(f"model.remat={remat!r} must be True or False.")
  if conv_impl not in CONV_IMPLS:
    raise ValueError(f"model.conv_impl={conv_impl!r} must be one of {CONV_IMPLS} here; 'auto' "
                     "is resolved from the mesh's platform (ModelOptions.conv_implementation) "
                     "first.")
  return MixSiamNetwork(depth=depth, width=width, stem=stem, projector_layers=projector_layers,
                        projector_hidden_dim=projector_hidden_dim, projector_dim=projector_dim,
                        predictor_hidden_dim=predictor_hidden_dim, num_classes=num_classes,
                        dtype=DTYPES[dtype], remat=remat, conv_impl=conv_impl)
