"""Helpers shared by several test modules."""
import dataclasses
import pathlib
import sys

from configs import cifar10
from mixsiam_jax import models
from mixsiam_jax.options import programs


def override(config, overrides):
  """Sets each {'dotted.field': value} of ``overrides`` in ``config``; returns ``config``."""
  for key, value in overrides.items():
    *parents, name = key.split(".")
    node = config
    for parent in parents:
      node = node[parent]
    node[name] = value
  return config


def pretrain_options(variant="", **overrides):
  """PretrainOptions of configs/cifar10.py (the paper's CIFAR recipe) with overrides.

  Args:
    variant: '' or 'tiny'.
    **overrides: config fields to set first, dotted names as '__' (e.g. model__depth=50).

  Returns:
    The PretrainOptions, built as main.py builds them.
  """
  config = cifar10.get_config(variant)
  override(config, {key.replace("__", "."): value for key, value in overrides.items()})
  return programs.pretrain_options(config)


def method(**fields):
  """The paper's MethodOptions (configs/cifar10.py) with ``fields`` replaced."""
  return dataclasses.replace(pretrain_options().method, **fields)


def photometric(**fields):
  """The paper's CIFAR PhotometricOptions (no blur) with ``fields`` replaced."""
  return dataclasses.replace(pretrain_options().photometric, **fields)


def model_options(**fields):
  """The paper's CIFAR ModelOptions (ResNet-18, CIFAR stem) with ``fields`` replaced."""
  return dataclasses.replace(pretrain_options().model, **fields)


def optim_options(**fields):
  """The paper's CIFAR pretraining OptimOptions with ``fields`` replaced."""
  return dataclasses.replace(pretrain_options().optim, **fields)


def network(dtype="float32", conv_impl="xla", **model):
  """A MixSiamNetwork with the given compute dtype and convolution (no platform default).

  Args:
    dtype: 'float32' or 'bfloat16' (the compute dtype; parameters stay float32).
    conv_impl: the convolution implementation, 'xla' or 'matmul_weight_grad'.
    **model: further ModelOptions fields (depth, width, stem, head sizes).

  Returns:
    The MixSiamNetwork, built as for a CPU mesh.
  """
  options = model_options(half_precision=dtype == "bfloat16", conv_impl=conv_impl, **model)
  return models.MixSiamNetwork(options, "cpu")


def snapshot(directory, mtimes: bool = False):
  """{relative path: contents} of every file below ``directory`` (with mtimes: (mtime_ns, contents)).

  For asserting that a program left a directory exactly as it was.
  """
  directory = pathlib.Path(directory)
  return {str(p.relative_to(directory)): ((p.stat().st_mtime_ns, p.read_bytes()) if mtimes
                                          else p.read_bytes())
          for p in sorted(directory.rglob("*")) if p.is_file()}


def progress_recorder(lines):
  """A stand-in for absl's logging.info that records what progress.py prints in ``lines``.

  Recorded directly, not through caplog: another test may have quieted absl's
  logger; lines of other modules are passed on to absl.
  """
  from absl import logging  # pylint: disable=g-import-not-at-top
  info = logging.info

  def record(fmt, *args, **kwargs):
    if sys._getframe(1).f_code.co_filename.endswith("progress.py"):  # pylint: disable=protected-access
      lines.append(fmt % args if args else fmt)
    else:
      info(fmt, *args, **kwargs)
  return record
