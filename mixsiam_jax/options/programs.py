"""Each program's options, built once from its config: the one place that reads a config.

``from_config`` turns a config (configs/*.py) into the options of the program it
names: PretrainOptions, ProbeOptions or KnnProgramOptions. Every value is
checked when the object is built, and every error names the config field and
the fix. Below main.py (and the planner, scripts and benchmarks, which build
their options here too) nothing reads a config: the programs take these
objects, and the modules below them take plain values. Fields have no defaults:
the configs are the one place defaults live. Nothing here imports TensorFlow or
reads data, so the compile planner can build a pretraining step from a config
alone.
"""
import dataclasses
import json
from typing import Any, Dict, Optional, Tuple, Union

import ml_collections

from mixsiam_jax.options.checks import (OptionsError, boolean, check_duration, non_negative_int,
                                        positive_int)
from mixsiam_jax.options.shared import (Cadence, CheckpointOptions, EncoderSource, EvalData,
                                        FileArchitecture, KnnOptions, TrainData, check_crop_scale)
from mixsiam_jax.options.training import (MethodOptions, ModelOptions, OptimOptions,
                                          PhotometricOptions)


@dataclasses.dataclass(frozen=True)
class PretrainOptions:
  """Everything a pretraining run needs (configs/cifar10.py documents each field).

  Attributes:
    method, model, photometric, optim: what is trained (mixsiam_jax.options);
      model.num_classes is 0 here: the program sets it from the training data
      when online_probe is on.
    photometric_on_device: colour jitter, grayscale and blur inside the jitted
      step (True) or on the host (False).
    batch_size: global batch over all devices and processes.
    image_size: side of the square training crops.
    seed: seed of initialisation, data order and augmentations.
    num_train_steps: training length in steps (-1: from num_epochs).
    num_epochs: training length in epochs, when num_train_steps is -1.
    online_probe: train a linear classifier on stop-gradient features (labelled data).
    data: the training stream.
    evaluation: the kNN monitor's data (None: no monitor).
    knn: the kNN monitor's vote.
    cadence: when to log, checkpoint and evaluate.
    checkpoints: which checkpoints to keep and how to write them.
    profile_steps: steps traced by the profiler (0: none).
    record: the resolved config, as written to config.json and compared on resume.
  """
  method: MethodOptions
  model: ModelOptions
  photometric: PhotometricOptions
  optim: OptimOptions
  photometric_on_device: bool
  batch_size: int
  image_size: int
  seed: int
  num_train_steps: int
  num_epochs: float
  online_probe: bool
  data: TrainData
  evaluation: Optional[EvalData]
  knn: KnnOptions
  cadence: Cadence
  checkpoints: CheckpointOptions
  profile_steps: int
  record: Dict[str, Any] = dataclasses.field(compare=False, repr=False)

  def __post_init__(self):
    positive_int("batch_size", self.batch_size)
    positive_int("image_size", self.image_size)
    check_duration(self.num_train_steps, self.num_epochs)
    boolean("online_probe", self.online_probe)
    boolean("data.photometric_on_device", self.photometric_on_device)
    if self.data.resize_on_device and not self.photometric_on_device:
      raise OptionsError("data.resize_on_device=True needs data.photometric_on_device=True (the "
                         "colour ops run on the views, which the device makes); set "
                         "data.resize_on_device=False to do both on the host.")
    non_negative_int("profile_steps", self.profile_steps, "off")
    if self.optim.name != "sgd":
      raise OptionsError(f"optim.name={self.optim.name!r}: pretraining uses 'sgd' (LARS is "
                         "for the linear probe).")


@dataclasses.dataclass(frozen=True)
class ProbeOptions:
  """Everything a linear probe needs (configs/linear_probe.py documents each field).

  Attributes:
    encoder: the encoder probed.
    data: the probe's training and evaluation splits (image_size -1: the encoder's).
    augment: crop + flip every step (official) or features of the plain images.
    crop_scale: RandomResizedCrop area range of the augmented variant.
    seed: classifier initialisation and data order.
    batch_size: global batch of the classifier.
    num_train_steps: training length in steps (-1: from num_epochs).
    num_epochs: training length in epochs of the training split, when num_train_steps is -1.
    optim: 'lars' or 'sgd' with its learning rate, momentum and weight decay.
    cadence: when to log and checkpoint (the evaluation runs at the end).
    checkpoints: which checkpoints to keep (written synchronously).
    record: the resolved config, as written to config.json and compared on resume.
  """
  encoder: EncoderSource
  data: EvalData
  augment: bool
  crop_scale: Tuple[float, float]
  seed: int
  batch_size: int
  num_train_steps: int
  num_epochs: float
  optim: OptimOptions
  cadence: Cadence
  checkpoints: CheckpointOptions
  record: Dict[str, Any] = dataclasses.field(compare=False, repr=False)

  def __post_init__(self):
    object.__setattr__(self, "crop_scale", check_crop_scale(self.crop_scale))
    boolean("probe.augment", self.augment)
    positive_int("batch_size", self.batch_size)
    check_duration(self.num_train_steps, self.num_epochs)


@dataclasses.dataclass(frozen=True)
class KnnProgramOptions:
  """Everything the kNN program needs (configs/knn.py documents each field).

  Attributes:
    encoder: the encoder evaluated.
    data: bank (training side) and queries (evaluation side); image_size -1: the encoder's.
    knn: the vote.
    record: the resolved config, as written to config.json.
  """
  encoder: EncoderSource
  data: EvalData
  knn: KnnOptions
  record: Dict[str, Any] = dataclasses.field(compare=False, repr=False)


ProgramOptions = Union[PretrainOptions, ProbeOptions, KnnProgramOptions]


def from_config(config: ml_collections.ConfigDict) -> ProgramOptions:
  """The options of the program ``config.program`` names, checked.

  Args:
    config: a config of configs/*.py, with command-line overrides applied.

  Returns:
    PretrainOptions, ProbeOptions or KnnProgramOptions.

  Raises:
    OptionsError (and DatasetError for a malformed data set name): naming the
    first invalid field and the fix.
  """
  program = config.get("program", "pretrain")
  if program not in _PROGRAMS:
    raise OptionsError(f"config.program={program!r} must be one of {tuple(_PROGRAMS)}.")
  return _PROGRAMS[program][0](config)


def program_name(options: ProgramOptions) -> str:
  """'pretrain', 'linear_probe' or 'knn': the program that runs ``options``."""
  return next(name for name, (_, kind) in _PROGRAMS.items() if isinstance(options, kind))


def _record(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  return json.loads(config.to_json_best_effort())


def _from_config(cls: type, group: ml_collections.ConfigDict, where: str, **given: Any) -> Any:
  """An options object whose fields come from the config group's fields of the same names.

  Args:
    cls: the options dataclass (its own __post_init__ checks the values).
    group: the config (or one of its groups, e.g. config.data) holding the fields.
    where: the group's path in the config, for errors ('config', 'config.data').
    **given: the fields not read from ``group`` (named differently in the config,
      or set by the program).

  Returns:
    ``cls(**fields)``; config lists become tuples.

  Raises:
    OptionsError: a field without a default is missing from the config.
  """
  values = dict(given)
  for field in dataclasses.fields(cls):
    if field.name in given or not field.init:
      continue
    if field.name not in group:
      if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
        raise OptionsError(f"{where}.{field.name} is missing: the config must set it (see the "
                           "config files in configs/ for its meaning and default).")
      continue
    value = group[field.name]
    values[field.name] = tuple(value) if isinstance(value, list) else value
  return cls(**values)


def _eval_data(config: ml_collections.ConfigDict) -> EvalData:
  # The data group's eval_transform and skip_bad_images, the root's data sets and sizes.
  return _from_config(EvalData, config, "config", batch_size=config.eval_batch_size,
                      transform=config.data.eval_transform,
                      skip_bad_images=config.data.skip_bad_images)


def pretrain_options(config: ml_collections.ConfigDict) -> PretrainOptions:
  """PretrainOptions from a pretraining config (configs/cifar10.py and the configs built on it)."""
  if config.get("pretrained"):
    raise OptionsError(f"pretrained={config.pretrained!r} is not used by pretraining (it names "
                       "the run that configs/knn.py and configs/linear_probe.py evaluate); "
                       "remove --config.pretrained.")
  return _from_config(
      PretrainOptions, config, "config",
      method=_from_config(MethodOptions, config.method, "config.method"),
      model=_from_config(ModelOptions, config.model, "config.model",
                         half_precision=config.half_precision),
      photometric=_from_config(PhotometricOptions, config.data, "config.data"),
      optim=_from_config(OptimOptions, config.optim, "config.optim"),
      photometric_on_device=config.data.photometric_on_device,
      data=_from_config(TrainData, config.data, "config.data", dataset=config.dataset,
                        split=config.train_split),
      evaluation=_eval_data(config) if config.eval_dataset else None,
      knn=_from_config(KnnOptions, config.knn, "config.knn"),
      cadence=_from_config(Cadence, config, "config"),
      checkpoints=CheckpointOptions(keep=config.keep_checkpoints,
                                    keep_every_steps=config.keep_checkpoints_every_steps,
                                    async_save=config.async_checkpointing),
      record=_record(config))


def _encoder(config: ml_collections.ConfigDict) -> EncoderSource:
  return EncoderSource(pretrained=config.pretrained,
                       file_architecture=_from_config(FileArchitecture, config.pretrained_model,
                                                      "config.pretrained_model"))


def probe_options(config: ml_collections.ConfigDict) -> ProbeOptions:
  """ProbeOptions from a linear-probe config (configs/linear_probe.py)."""
  return _from_config(
      ProbeOptions, config, "config", encoder=_encoder(config), data=_eval_data(config),
      augment=config.probe.augment, crop_scale=config.data.crop_scale,
      optim=_from_config(OptimOptions, config.optim, "config.optim", fix_predictor_lr=False),
      cadence=_from_config(Cadence, config, "config", eval_every_steps=0),
      checkpoints=CheckpointOptions(keep=config.keep_checkpoints, keep_every_steps=0,
                                    async_save=False),
      record=_record(config))


def knn_program_options(config: ml_collections.ConfigDict) -> KnnProgramOptions:
  """KnnProgramOptions from a kNN config (configs/knn.py)."""
  return KnnProgramOptions(encoder=_encoder(config), data=_eval_data(config),
                           knn=_from_config(KnnOptions, config.knn, "config.knn"),
                           record=_record(config))


# config.program -> (options builder, options type).
_PROGRAMS = {"pretrain": (pretrain_options, PretrainOptions),
             "linear_probe": (probe_options, ProbeOptions),
             "knn": (knn_program_options, KnnProgramOptions)}
