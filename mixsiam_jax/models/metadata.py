"""The description of the model that every pretraining checkpoint carries, written and read here.

Pretraining saves it with each checkpoint step; the evaluation programs read it
back to rebuild the backbone at the dtype it was trained in and to read images
at the size it was trained at. Both directions live in this module so the keys
and the dtype names have one definition.
"""
from typing import Any, Dict, Optional, Tuple

from mixsiam_jax.models.mixsiam import DTYPES
from mixsiam_jax.models.resnet import ResNet
from mixsiam_jax.options.training import ModelOptions, compute_dtype

# ModelOptions.half_precision -> the name stored (and back).
_DTYPE_NAMES = {None: "auto", True: "bfloat16", False: "float32"}
_HALF_PRECISION = {name: value for value, name in _DTYPE_NAMES.items()}


def pretraining_meta(model: ModelOptions, *, image_size: int, dataset: str, train_split: str,
                     seed: int) -> Dict[str, Any]:
  """The JSON metadata saved with every pretraining checkpoint.

  Args:
    model: the trained model's options.
    image_size: side of the training crops.
    dataset, train_split: what it was trained on.
    seed: the run's seed.

  Returns:
    {'model': {...}, 'image_size', 'dataset', 'train_split', 'seed'}.
  """
  described = dict(depth=model.depth, width=model.width, stem=model.stem,
                   projector_layers=model.projector_layers,
                   projector_hidden_dim=model.projector_hidden_dim,
                   projector_dim=model.projector_dim,
                   predictor_hidden_dim=model.predictor_hidden_dim,
                   dtype=_DTYPE_NAMES[model.half_precision], remat=model.remat,
                   conv_impl=model.conv_impl, num_classes=model.num_classes)
  return {"model": described, "image_size": image_size, "dataset": dataset,
          "train_split": train_split, "seed": seed}


def backbone_from_meta(meta: Dict[str, Any], platform: str) -> Optional[Tuple[ResNet, int]]:
  """The backbone a checkpoint's metadata describes, and its training image size.

  Args:
    meta: a checkpoint's metadata (pretraining_meta).
    platform: 'cpu', 'gpu' or 'tpu': decides the compute dtype of a model
      saved with dtype 'auto', as pretraining did.

  Returns:
    (ResNet with XLA's convolutions at the trained dtype, image size), or None
    when the metadata does not describe a model (not a pretraining checkpoint).
  """
  model = meta.get("model")
  if model is None or "image_size" not in meta:
    return None
  # Checkpoints written before the dtype was recorded trained in float32.
  half_precision = _HALF_PRECISION[model.get("dtype", "float32")]
  dtype = DTYPES[compute_dtype(half_precision, platform)]
  return ResNet(model["depth"], model["width"], model["stem"], dtype=dtype), int(meta["image_size"])
