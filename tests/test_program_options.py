"""program_options.py: every config becomes its program's options once, checked, from the config's values."""
import dataclasses
import re

import pytest

from configs import cifar10, imagenet, knn as knn_config, linear_probe as probe_config
from configs import simsiam_cifar10
from mixsiam_jax import program_options
from mixsiam_jax import run_options
from mixsiam_jax.data import DatasetError
from mixsiam_jax.options import OptionsError
from mixsiam_jax.run_options import Cadence, CheckpointOptions, FileArchitecture, KnnOptions


@pytest.mark.parametrize("get_config,kind", [
    (cifar10.get_config, program_options.PretrainOptions),
    (imagenet.get_config, program_options.PretrainOptions),
    (simsiam_cifar10.get_config, program_options.PretrainOptions),
    (probe_config.get_config, program_options.ProbeOptions),
    (knn_config.get_config, program_options.KnnProgramOptions),
])
def test_every_config_builds_the_options_of_its_program(get_config, kind):
  config = get_config()
  options = program_options.from_config(config)
  assert type(options) is kind
  assert program_options.program_name(options) == config.get("program", "pretrain")
  assert options.record["program"] == config.program  # what config.json records


def test_pretraining_options_hold_the_configs_values():
  config = cifar10.get_config()
  opts = program_options.pretrain_options(config)
  assert (opts.optim.base_lr, opts.optim.weight_decay) == (0.03, 4e-4)  # not a library default
  assert opts.method.lam == config.method.lam and opts.model.depth == 18
  assert opts.data == run_options.TrainData(
      dataset="tfds:cifar10", split="train", crop_scale=(0.2, 1.0), skip_bad_images=True,
      device_prefetch=2)
  assert opts.evaluation.image_size == config.image_size and opts.knn == KnnOptions(200, 0.1)
  assert opts.cadence == Cadence(log_every_steps=50, checkpoint_every_steps=1000,
                                 eval_every_steps=5000)
  assert opts.checkpoints == CheckpointOptions(keep=3, keep_every_steps=0, async_save=True)
  assert opts.model.num_classes == 0  # set by the program from the data
  config.eval_dataset = ""
  assert program_options.pretrain_options(config).evaluation is None


def test_probe_options_hold_the_configs_values():
  opts = program_options.probe_options(probe_config.get_config("fast"))
  assert (opts.optim.name, opts.optim.base_lr, opts.optim.fix_predictor_lr) == ("sgd", 0.3, False)
  assert opts.data.image_size == run_options.FROM_ENCODER and not opts.augment
  assert opts.checkpoints.async_save is False and opts.cadence.eval_every_steps == 0
  assert opts.encoder.file_architecture == FileArchitecture(50, 64, "imagenet", 32)


def test_option_fields_have_no_defaults_of_their_own():
  """The configs are the one place defaults live (num_classes is not a config field)."""
  classes = [c for module in (program_options, run_options) for c in vars(module).values()
             if dataclasses.is_dataclass(c) and c.__module__ == module.__name__]
  classes += [program_options.MethodOptions, program_options.ModelOptions,
              program_options.OptimOptions, program_options.PhotometricOptions]
  defaults = {f"{c.__name__}.{f.name}" for c in classes for f in dataclasses.fields(c)
              if f.default is not dataclasses.MISSING
              or f.default_factory is not dataclasses.MISSING}
  assert defaults == {"ModelOptions.num_classes"}


@pytest.mark.parametrize("get_config,field,value,needle", [
    (cifar10.get_config, "log_every_steps", 0, "log_every_steps=0 must be a positive integer"),
    (cifar10.get_config, "checkpoint_every_steps", 2.5, "checkpoint_every_steps=2.5"),
    (cifar10.get_config, "eval_every_steps", -1, "eval_every_steps=-1 must be an integer >= 0"),
    (cifar10.get_config, "keep_checkpoints", 0, "keep_checkpoints=0"),
    (cifar10.get_config, "keep_checkpoints_every_steps", -3, "keep_checkpoints_every_steps=-3"),
    (cifar10.get_config, "async_checkpointing", "yes", "async_checkpointing='yes'"),
    (cifar10.get_config, "data.device_prefetch", 0, "data.device_prefetch=0"),
    (cifar10.get_config, "data.crop_scale", (0.5, 0.2), "data.crop_scale=(0.5, 0.2)"),
    (cifar10.get_config, "online_probe", 1, "online_probe=1 must be true or false"),
    (cifar10.get_config, "profile_steps", -1, "profile_steps=-1"),
    (cifar10.get_config, "optim.name", "lars", "pretraining uses 'sgd'"),
    (cifar10.get_config, "model.depth", 20, "model.depth=20 must be one of"),
    (cifar10.get_config, "eval_batch_size", 0, "eval_batch_size=0"),
    (cifar10.get_config, "knn.k", 0, "knn.k=0"),
    (cifar10.get_config, "knn.temperature", -0.1, "knn.temperature=-0.1"),
    (cifar10.get_config, "pretrained", "/runs/a", "pretrained='/runs/a' is not used by "
                                                  "pretraining"),
    (probe_config.get_config, "batch_size", 0, "batch_size=0"),
    (probe_config.get_config, "optim.name", "adam", "optim.name='adam'"),
    (probe_config.get_config, "probe.augment", "no", "probe.augment='no'"),
    (probe_config.get_config, "num_train_steps", 0, "num_train_steps=0 must be -1"),
    (probe_config.get_config, "image_size", 0,
     "image_size=0 must be a positive integer, or -1 for the size the encoder was trained at"),
    (probe_config.get_config, "data.eval_transform", "crop", "data.eval_transform='crop'"),
    (knn_config.get_config, "pretrained_model.depth", 19, "pretrained_model.depth=19"),
    (knn_config.get_config, "pretrained_model.image_size", 0,
     "pretrained_model.image_size=0"),
    (knn_config.get_config, "program", "train", "config.program='train' must be one of"),
])
def test_a_bad_value_is_refused_naming_its_field(get_config, field, value, needle):
  config = get_config()
  *parents, name = field.split(".")
  node = config
  for parent in parents:
    node = node[parent]
  with node.ignore_type():
    node[name] = value
  with pytest.raises(OptionsError, match=re.escape(needle)):
    program_options.from_config(config)


def test_a_bad_training_data_set_is_refused_before_anything_is_opened():
  config = cifar10.get_config()
  config.dataset = "folder"
  with pytest.raises(DatasetError, match="dataset='folder' must be 'tfds:NAME'"):
    program_options.from_config(config)
