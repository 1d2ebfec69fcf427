"""The parts of a run's options that several programs share: data, evaluation, encoder, cadence.

options/programs.py builds them from configs (as parts of each program's
options); every value is checked when built, naming its config field. Nothing
here imports TensorFlow or reads data.
"""
import dataclasses
from typing import Any, Tuple

from mixsiam_jax.options import data_names
from mixsiam_jax.options.checks import (OptionsError, boolean, non_negative_int, one_of,
                                        positive_int, positive_number)
from mixsiam_jax.options.training import check_backbone

# image_size of the evaluation configs that means "the size the encoder was trained at".
FROM_ENCODER = -1


@dataclasses.dataclass(frozen=True)
class Cadence:
  """When a training loop logs, checkpoints and evaluates.

  Attributes:
    log_every_steps: metrics are averaged and written every this many steps.
    checkpoint_every_steps: a checkpoint every this many steps (and at the end).
    eval_every_steps: the evaluator runs every this many steps (0: only at the end).
  """
  log_every_steps: int
  checkpoint_every_steps: int
  eval_every_steps: int

  def __post_init__(self):
    positive_int("log_every_steps", self.log_every_steps)
    positive_int("checkpoint_every_steps", self.checkpoint_every_steps)
    non_negative_int("eval_every_steps", self.eval_every_steps, "only at the end")


@dataclasses.dataclass(frozen=True)
class CheckpointOptions:
  """Which checkpoints a run keeps and how it writes them.

  Attributes:
    keep: the newest this many are kept.
    keep_every_steps: and every multiple of this step (0: none).
    async_save: write in the background while training goes on.
  """
  keep: int
  keep_every_steps: int
  async_save: bool

  def __post_init__(self):
    positive_int("keep_checkpoints", self.keep)
    non_negative_int("keep_checkpoints_every_steps", self.keep_every_steps, "none")
    boolean("async_checkpointing", self.async_save)


def check_crop_scale(value: Any) -> Tuple[float, float]:
  """data.crop_scale as a float pair (min, max) with 0 < min <= max <= 1."""
  try:
    scale = tuple(float(v) for v in value)
  except (TypeError, ValueError):
    scale = ()
  if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
    raise OptionsError(f"data.crop_scale={value!r} must be (min, max) with "
                       "0 < min <= max <= 1.")
  return scale


@dataclasses.dataclass(frozen=True)
class TrainData:
  """The augmented training stream of pretraining (and of the augmented probe).

  Attributes:
    dataset, split: 'tfds:NAME' or 'folder:PATH', and its split.
    crop_scale: RandomResizedCrop area range.
    skip_bad_images: skip (and report) undecodable images instead of failing.
    device_prefetch: batches placed on the devices ahead of the step.
    resize_on_device: the host sends decoded images in canvases with their crop
      windows, and the train step crops, resizes and flips (False: the host does).
    canvas_size: side of the canvases (resize_on_device); larger images are shrunk
      on the host to fit, counted and reported.
  """
  dataset: str
  split: str
  crop_scale: Tuple[float, float]
  skip_bad_images: bool
  device_prefetch: int
  resize_on_device: bool
  canvas_size: int

  def __post_init__(self):
    data_names.check_split(self.dataset, self.split, "dataset", "train_split")
    object.__setattr__(self, "crop_scale", check_crop_scale(self.crop_scale))
    boolean("data.skip_bad_images", self.skip_bad_images)
    positive_int("data.device_prefetch", self.device_prefetch)
    boolean("data.resize_on_device", self.resize_on_device)
    positive_int("data.canvas_size", self.canvas_size)


@dataclasses.dataclass(frozen=True)
class EvalData:
  """Two labelled splits read with the evaluation transform (validated when built).

  Attributes:
    dataset, train_split: the training side ('tfds:NAME' or 'folder:PATH'): the
      kNN bank, the probe's training set.
    eval_dataset, eval_split: the evaluation side: the queries, the probe's test set.
    image_size: side of the images fed to the encoder; FROM_ENCODER (-1, the
      evaluation programs) until the encoder's own size is known.
    batch_size: global batch of feature extraction (a multiple of the devices).
    transform: one of data_names.EVAL_TRANSFORMS.
    skip_bad_images: mask (and report) unreadable images instead of failing.
  """
  dataset: str
  train_split: str
  eval_dataset: str
  eval_split: str
  image_size: int
  batch_size: int
  transform: str
  skip_bad_images: bool

  def __post_init__(self):
    data_names.check_split(self.dataset, self.train_split, "dataset", "train_split")
    data_names.check_split(self.eval_dataset, self.eval_split, "eval_dataset", "eval_split")
    if self.image_size != FROM_ENCODER:
      positive_int("image_size", self.image_size, "-1 for the size the encoder was trained at")
    positive_int("eval_batch_size", self.batch_size)
    one_of("data.eval_transform", self.transform, data_names.EVAL_TRANSFORMS)
    boolean("data.skip_bad_images", self.skip_bad_images)

  def data_sets(self) -> Tuple[Tuple[str, str], ...]:
    """(data set, config field) of both sides, e.g. for data/tfds_prepare.py."""
    return ((self.dataset, "dataset"), (self.eval_dataset, "eval_dataset"))


@dataclasses.dataclass(frozen=True)
class KnnOptions:
  """The weighted kNN vote.

  Attributes:
    k: neighbours per query (capped at the bank size).
    temperature: votes weigh exp(cosine / temperature).
  """
  k: int
  temperature: float

  def __post_init__(self):
    positive_int("knn.k", self.k)
    positive_number("knn.temperature", self.temperature)


@dataclasses.dataclass(frozen=True)
class FileArchitecture:
  """What a state-dict file does not say about itself (config.pretrained_model).

  Attributes:
    depth, width, stem: the ResNet (see models.ResNet).
    image_size: the side of the images it was trained on.
  """
  depth: int
  width: int
  stem: str
  image_size: int

  def __post_init__(self):
    check_backbone(self.depth, self.width, self.stem, "pretrained_model")
    positive_int("pretrained_model.image_size", self.image_size)


@dataclasses.dataclass(frozen=True)
class EncoderSource:
  """The encoder an evaluation program reads.

  Attributes:
    pretrained: a pretraining workdir or a .pth/.npz state-dict file.
    file_architecture: the ResNet of a state-dict file.
  """
  pretrained: str
  file_architecture: FileArchitecture
