"""Features of whole data sets: evaluation batches through an embed function, back on the host.

An evaluation reads the two labelled splits of a options.shared.EvalData (a
training side: the kNN bank or the probe's training set; an evaluation side: the
queries or the probe's test set) with its deterministic transform.
"""
import time
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from mixsiam_jax import augment, sharding
from mixsiam_jax.data import DatasetError, decode, iterate, pipeline, sources
from mixsiam_jax.options.shared import EvalData


def check_classes(data: EvalData, user: str) -> sources.DatasetInfo:
  """Checks that both sides exist, are labelled and have the same classes.

  Args:
    data: the two splits.
    user: who needs the labels, for the message (e.g. 'the kNN program').

  Returns:
    The training side's DatasetInfo (size, classes).

  Raises:
    DatasetError: a missing or unlabelled data set, or class names that differ
      (both sides named).
  """
  train = sources.get_dataset_info(data.dataset, data.train_split, field="dataset")
  other = sources.get_dataset_info(data.eval_dataset, data.eval_split, field="eval_dataset")
  if train.num_classes < 1:
    raise DatasetError(f"--config.dataset={data.dataset} has no labels; {user} needs labelled "
                       "data (class folders PATH/<class>/<image>, or a labelled TFDS set).")
  sources.check_same_classes(train, other)
  return train


def to_model_input(images: jax.Array) -> jax.Array:
  """uint8 [B, H, W, 3] -> float32 normalised with the ImageNet mean/std (as in training)."""
  return augment.normalize(images.astype(jnp.float32) / 255.0)


_to_model_input = jax.jit(to_model_input)


def to_host(x: Any) -> np.ndarray:
  """The whole global array on this host (gathered across processes if needed)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def extract_features(embed_fn: Callable[[jax.Array], jax.Array],
                     batches: Iterable[Dict[str, Any]]) -> Tuple[np.ndarray, np.ndarray]:
  """Embeds every unmasked example of ``batches``.

  Args:
    embed_fn: jitted function from normalised float images [B, H, W, 3] to
      features [B, F] (e.g. encoder.make_embed_fn with the variables bound).
    batches: iterable of {'image': uint8 [B, H, W, 3], 'label': int [B],
      'mask': bool [B] (False for padding; optional)}, global jax.Arrays
      sharded over the devices (or host arrays).

  Returns:
    (features float32 [N, F], labels int [N]) on the host, padded rows dropped,
    in the order of the batches. With several processes every process gets
    all rows.

  Raises:
    ValueError: if ``batches`` is empty.
  """
  features, labels = [], []
  for batch in batches:
    feats = embed_fn(_to_model_input(batch["image"]))
    mask = to_host(batch["mask"]).astype(bool) if "mask" in batch else None
    feats, labs = to_host(feats).astype(np.float32), to_host(batch["label"])
    if mask is not None:
      feats, labs = feats[mask], labs[mask]
    features.append(feats)
    labels.append(labs)
  if not features:
    raise ValueError("extract_features: the batch iterator yielded no batches; check the "
                     "evaluation split and batch size.")
  return np.concatenate(features), np.concatenate(labels)


def dataset_features(embed_fn: Callable[[jax.Array], jax.Array], mesh: Mesh, dataset: str,
                     split: str, *, image_size: int, batch_size: int, transform: str,
                     skip_bad_images: bool = True, field: str = "dataset",
                     bad_images: Optional[decode.BadImageLog] = None
                     ) -> Tuple[np.ndarray, np.ndarray]:
  """Features and labels of a whole split with the evaluation transform.

  Args:
    embed_fn: images -> features (see extract_features).
    mesh: the data mesh.
    dataset, split: as in data.pipeline.create_eval_dataset.
    image_size, batch_size, transform: the evaluation transform and global batch
      (a multiple of the mesh size).
    skip_bad_images: mask (and report) unreadable images instead of failing.
    field: the config field that names ``dataset``, for error messages.
    bad_images: where unreadable images are reported and remembered; an
      evaluator called again and again passes the same one, so each bad file is
      named and decoded with checks once (default: a new log).

  Returns:
    (features [N, F], labels [N]) on the host.
  """
  bad_images = bad_images if bad_images is not None else decode.BadImageLog()

  def make(start_batch, checked):
    return pipeline.create_eval_dataset(
        dataset, split, global_batch_size=batch_size, image_size=image_size,
        transform=transform, skip_bad_images=skip_bad_images, field=field,
        bad_images=bad_images, start_batch=start_batch, checked_decoding=checked)

  batches = sharding.prefetch_to_mesh(
      iterate.numpy_batches(make, name=f"--config.{field}={dataset}",
                            remembered=bad_images.remembered), mesh, 2)
  try:
    return extract_features(embed_fn, batches)
  finally:
    batches.close()  # Stops the reading thread however the extraction ended.


def split_features(embed_fn: Callable[[jax.Array], jax.Array], mesh: Mesh, data: EvalData,
                   side: str, bad_images: Optional[decode.BadImageLog] = None
                   ) -> Tuple[np.ndarray, np.ndarray]:
  """dataset_features of the 'train' or 'eval' side of ``data`` (``bad_images`` as there)."""
  dataset, split, field = ((data.dataset, data.train_split, "dataset") if side == "train"
                           else (data.eval_dataset, data.eval_split, "eval_dataset"))
  # A pass over a large split takes minutes: say what it is and what it took.
  verbose = jax.process_index() == 0
  if verbose:
    logging.info("Computing features of %s split %r at %d px ...", dataset, split,
                 data.image_size)
  start = time.monotonic()
  feats, labels = dataset_features(embed_fn, mesh, dataset, split, image_size=data.image_size,
                                   batch_size=data.batch_size, transform=data.transform,
                                   skip_bad_images=data.skip_bad_images, field=field,
                                   bad_images=bad_images)
  if verbose:
    seconds = time.monotonic() - start
    logging.info("Computed %d features of %s split %r in %.1f s (%.0f images/s).", len(feats),
                 dataset, split, seconds, len(feats) / max(seconds, 1e-9))
  return feats, labels
