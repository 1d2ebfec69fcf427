"""The frozen encoder that every evaluation uses: one restore path, one embed function.

An encoder comes from a pretraining workdir (a given or its newest checkpoint)
or from a state-dict file (.pth / .npz, torchvision or official SimSiam layout).
Either way the result is the ``ResNet`` module itself, its variables replicated
on the mesh, and where they came from (step, training image size). Features
are the globally pooled backbone output in inference mode (BN running
statistics), computed by a jitted function built on the ResNet: the kNN monitor
of pretraining, the kNN program and the linear probe all call it.
"""
import dataclasses
import hashlib
import os
from typing import Any, Callable, Dict, Optional

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh

from mixsiam_jax import sharding, weights
from mixsiam_jax.checkpoints import reader
from mixsiam_jax.errors import UserError
from mixsiam_jax.models import ResNet, metadata
from mixsiam_jax.options.shared import FileArchitecture
from mixsiam_jax.workdir import run_files

WEIGHT_FILE_SUFFIXES = (".pth", ".pth.tar", ".pt", ".npz")
# Workdirs of the evaluation programs, which hold no encoder of their own.
_EVALUATION_PROGRAMS = {"linear_probe": "a linear-probe", "knn": "a kNN"}

# ``embed(variables, images) -> features``: normalised float images [B, H, W, 3]
# to pooled features [B, F] (float32).
EmbedFn = Callable[[Any, jax.Array], jax.Array]


class EncoderError(UserError):
  """A pretrained encoder that cannot be restored as asked."""


@dataclasses.dataclass(frozen=True)
class FrozenEncoder:
  """A restored backbone, never updated.

  Attributes:
    resnet: the ResNet module (dtype of its training run; XLA's convolutions).
    variables: {'params', 'batch_stats'} of the ResNet, replicated on the mesh.
    source: absolute path of the workdir or file it came from.
    step: the checkpoint step (0 for a file).
    image_size: the side of the images it was trained on.
    fingerprint: SHA-256 of the variables when restored (see check_unchanged).
  """
  resnet: ResNet
  variables: Dict[str, Any]
  source: str
  step: int
  image_size: int
  fingerprint: str

  @property
  def feature_dim(self) -> int:
    """Length of the pooled feature vector."""
    return self.resnet.feature_dim

  def check_unchanged(self) -> None:
    """The official linear-probe sanity check: the variables are still those restored.

    Raises:
      RuntimeError: if they changed (a bug: nothing may update a frozen encoder).
    """
    if fingerprint(self.variables) != self.fingerprint:
      raise RuntimeError("the frozen backbone changed during evaluation; this is a bug.")


def fingerprint(tree: Any) -> str:
  """SHA-256 over the bytes of every leaf of ``tree`` (fetched to the host)."""
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(jax.device_get(tree)):
    digest.update(np.ascontiguousarray(leaf).tobytes())
  return digest.hexdigest()


def make_embed_fn(resnet: ResNet, mesh: Mesh, subtree: Optional[str] = None) -> EmbedFn:
  """Jitted ``embed(variables, images) -> [B, F]``: pooled features in inference mode.

  Args:
    resnet: the backbone module.
    mesh: the data mesh; variables replicated, images sharded on the batch axis.
    subtree: None when ``variables`` are the ResNet's own; the name of the
      backbone inside a larger network's variables (e.g. 'backbone' for the
      MixSiamNetwork being pretrained), which the function then reads in place.

  Returns:
    The compiled function (float32 features, no gradient).
  """
  rep, data = sharding.replicated(mesh), sharding.batch_sharded(mesh)

  def embed(variables, images):
    if subtree is not None:
      variables = {k: variables[k][subtree] for k in ("params", "batch_stats")}
    return jax.lax.stop_gradient(resnet.apply(variables, images, False))

  return jax.jit(embed, in_shardings=(rep, data), out_shardings=data)


def backbone_of(network: nn.Module) -> ResNet:
  """The backbone of a MixSiamNetwork as a standalone ResNet with the same options."""
  return network.bind({}).backbone.clone(parent=None)


def _refuse_evaluation_workdir(pretrained: str) -> None:
  """A workdir of the kNN or probe program passed as ``pretrained`` gets a message saying so."""
  config = run_files.read_config(pretrained) or {}
  kind = _EVALUATION_PROGRAMS.get(config.get("program"))
  if kind is not None:
    raise EncoderError(
        f"pretrained={pretrained} is {kind} workdir (its config.json has program="
        f"{config['program']!r}); pretrained wants a pretraining workdir (the --workdir of a "
        "pretraining run) or a .pth/.npz state-dict file.")


def _restore_workdir(pretrained: str, mesh: Mesh, step: Optional[int]):
  """(ResNet, backbone variables, step, image size) of a pretraining checkpoint."""
  _refuse_evaluation_workdir(pretrained)
  tree, meta, step = reader.restore_replicated(pretrained, mesh, step)
  described = metadata.backbone_from_meta(meta, sharding.mesh_platform(mesh))
  if described is None:
    raise EncoderError(
        f"pretrained={pretrained}: checkpoint step {step} does not describe its model and image "
        "size in its metadata; pretrained wants the workdir of a mixsiam_jax pretraining run.")
  resnet, image_size = described
  variables = {"params": tree["params"]["backbone"],
               "batch_stats": tree["batch_stats"]["backbone"]}
  return resnet, variables, step, image_size


def _load_file(path: str, mesh: Mesh, arch: FileArchitecture):
  """(ResNet, backbone variables) of a torchvision / official SimSiam state-dict file."""
  state_dict = weights.load_state_dict_file(path)  # its errors name the file
  try:
    params, batch_stats = weights.import_torch_state_dict(
        state_dict, depth=arch.depth, width=arch.width, stem=arch.stem, include_heads=False)
  except weights.WeightsError as e:
    raise EncoderError(
        f"pretrained={path} does not hold the ResNet-{arch.depth} (width {arch.width}, "
        f"{arch.stem} stem) that --config.pretrained_model describes: {e}") from e
  variables = jax.device_put({"params": params["backbone"],
                              "batch_stats": batch_stats["backbone"]},
                             sharding.replicated(mesh))
  return ResNet(arch.depth, arch.width, arch.stem), variables


def restore_encoder(pretrained: str, mesh: Mesh, *, step: Optional[int] = None,
                    file_architecture: Optional[FileArchitecture] = None) -> FrozenEncoder:
  """Restores the encoder that ``pretrained`` names, replicated on ``mesh``.

  Args:
    pretrained: a pretraining workdir, or a state-dict file ending in one of
      WEIGHT_FILE_SUFFIXES.
    mesh: where the variables go; its platform decides a checkpoint's 'auto' dtype.
    step: the checkpoint step of a workdir (None: the newest).
    file_architecture: the ResNet and training image size of a state-dict file
      (required for a file; a workdir's checkpoints describe their own).

  Returns:
    The FrozenEncoder.

  Raises:
    EncoderError, CheckpointError, WeightsError: naming what cannot be used and why.
  """
  if not pretrained:
    raise EncoderError("--config.pretrained is empty: set it to a pretraining workdir or a "
                       ".pth/.npz state-dict file.")
  if pretrained.endswith(WEIGHT_FILE_SUFFIXES):
    if file_architecture is None:
      raise EncoderError(f"pretrained={pretrained} is a state-dict file, which does not say "
                         "which ResNet it holds: set --config.pretrained_model.")
    resnet, variables = _load_file(pretrained, mesh, file_architecture)
    step, image_size = 0, file_architecture.image_size
  else:
    resnet, variables, step, image_size = _restore_workdir(pretrained, mesh, step)
  return FrozenEncoder(resnet=resnet, variables=variables, source=os.path.abspath(pretrained),
                       step=step, image_size=image_size, fingerprint=fingerprint(variables))
