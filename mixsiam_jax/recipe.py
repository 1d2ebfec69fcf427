"""The pretraining recipe: validated options from a config, and the network, optimiser and step.

``options_from_config`` reads a pretraining config once; ``build_training`` turns
the options and a mesh into the network (dtype and convolutions for the mesh's
platform), the optimiser, the schedule and the jitted step. The pretraining
program, the compile planner and the benchmarks build their step here. Nothing
here reads data or files, so the planner needs neither the input pipeline nor
TensorFlow.
"""
import dataclasses
from typing import Any, Callable, Dict

import flax.linen as nn
import jax
import ml_collections
import optax
from jax.sharding import Mesh

from mixsiam_jax import models, optim, sharding, train
from mixsiam_jax.options import (MethodOptions, ModelOptions, OptimOptions, OptionsError,
                                 PhotometricOptions, check_duration)


@dataclasses.dataclass(frozen=True)
class PretrainOptions:
  """Everything that defines what is trained (validated when built).

  Attributes:
    method, model, photometric, optim: see mixsiam_jax.options.
    photometric_on_device: colour jitter, grayscale and blur inside the jitted
      step (True) or on the host (False).
    batch_size: global batch over all devices and processes.
    image_size: side of the square training crops.
    seed: seed of initialisation, data order and augmentations.
    num_train_steps: training length in steps (-1: from num_epochs).
    num_epochs: training length in epochs, when num_train_steps is -1.
  """
  method: MethodOptions
  model: ModelOptions
  photometric: PhotometricOptions
  optim: OptimOptions
  photometric_on_device: bool = True
  batch_size: int = 512
  image_size: int = 32
  seed: int = 0
  num_train_steps: int = -1
  num_epochs: float = 800

  def __post_init__(self):
    for name in ("batch_size", "image_size"):
      value = getattr(self, name)
      if isinstance(value, bool) or not (isinstance(value, int) and value > 0):
        raise OptionsError(f"{name}={value!r} must be a positive integer.")
    check_duration(self.num_train_steps, self.num_epochs)
    if self.optim.name != "sgd":
      raise OptionsError(f"optim.name={self.optim.name!r}: pretraining uses 'sgd' (LARS is "
                         "for the linear probe).")


def options_from_config(config: ml_collections.ConfigDict, num_classes: int = 0
                        ) -> PretrainOptions:
  """Validated pretraining options from a pretraining config.

  Args:
    config: a pretraining config (see configs/cifar10.py).
    num_classes: classes of the training data (the online probe's output; used
      when config.online_probe is true and the data are labelled).

  Returns:
    The options.

  Raises:
    OptionsError: naming the first invalid field.
  """
  m, d, o = config.model, config.data, config.optim
  if not isinstance(config.online_probe, bool):
    raise OptionsError(f"online_probe={config.online_probe!r} must be true or false.")
  model = ModelOptions(
      depth=m.depth, width=m.width, stem=m.stem, projector_layers=m.projector_layers,
      projector_hidden_dim=m.projector_hidden_dim, projector_dim=m.projector_dim,
      predictor_hidden_dim=m.predictor_hidden_dim, half_precision=config.half_precision,
      remat=m.remat, conv_impl=m.conv_impl,
      num_classes=max(num_classes, 0) if config.online_probe else 0)
  return PretrainOptions(
      method=MethodOptions(**config.method.to_dict()),
      model=model,
      photometric=PhotometricOptions(
          color_jitter=tuple(d.color_jitter), color_jitter_prob=d.color_jitter_prob,
          grayscale_prob=d.grayscale_prob, blur_prob=d.blur_prob, blur_sigma=tuple(d.blur_sigma)),
      optim=OptimOptions(name=o.name, base_lr=o.base_lr, momentum=o.momentum,
                         weight_decay=o.weight_decay, warmup_epochs=o.warmup_epochs,
                         fix_predictor_lr=o.fix_predictor_lr),
      photometric_on_device=d.photometric_on_device, batch_size=config.batch_size,
      image_size=config.image_size, seed=config.seed, num_train_steps=config.num_train_steps,
      num_epochs=config.num_epochs)


def model_meta(model: ModelOptions) -> Dict[str, Any]:
  """The model description stored with every checkpoint (read by the evaluation programs)."""
  dtype = {None: "auto", True: "bfloat16", False: "float32"}[model.half_precision]
  return dict(depth=model.depth, width=model.width, stem=model.stem,
              projector_layers=model.projector_layers,
              projector_hidden_dim=model.projector_hidden_dim, projector_dim=model.projector_dim,
              predictor_hidden_dim=model.predictor_hidden_dim, dtype=dtype, remat=model.remat,
              conv_impl=model.conv_impl, num_classes=model.num_classes)


@dataclasses.dataclass(frozen=True)
class Training:
  """What the loop needs, built from the options and a mesh.

  Attributes:
    network: the MixSiam network (dtype and convolution chosen for the mesh's platform).
    tx: the optimiser.
    schedule: the encoder's learning-rate schedule.
    num_steps: training length.
    step: the jitted step ``(state, batch, rng) -> (state, metrics)``; donates the state.
    views: the jitted view preparation ``(batch, rng, step) -> views`` (previews).
  """
  network: nn.Module
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  num_steps: int
  step: Callable
  views: Callable


def build_training(opts: PretrainOptions, mesh: Mesh, num_examples: int) -> Training:
  """The network, optimiser and jitted step of a pretraining run on ``mesh``.

  Args:
    opts: the validated options.
    mesh: the data-parallel mesh; its devices decide dtype and convolutions.
    num_examples: size of the training set (for epochs -> steps).

  Returns:
    A Training.
  """
  platform = sharding.mesh_platform(mesh)
  network = models.MixSiamNetwork(opts.model, platform)
  num_steps = optim.steps("num_train_steps", steps=opts.num_train_steps, epochs=opts.num_epochs,
                         num_examples=num_examples, batch_size=opts.batch_size)
  warmup_steps = optim.steps("optim.warmup_epochs", steps=0, epochs=opts.optim.warmup_epochs,
                            num_examples=num_examples, batch_size=opts.batch_size)
  peak_lr = optim.scaled_learning_rate(opts.optim.base_lr, opts.batch_size)
  schedule = optim.cosine_schedule(peak_lr, num_steps, warmup_steps)
  tx = optim.create_optimizer(opts.optim, schedule, peak_lr, has_predictor=True)
  photometric = opts.photometric if opts.photometric_on_device else None
  step = train.jit_train_step(train.make_train_step(schedule, opts.method, photometric), mesh)
  rep = sharding.replicated(mesh)
  views = jax.jit(train.make_view_fn(opts.method, photometric),
                  in_shardings=(sharding.batch_sharded(mesh), rep, rep), out_shardings=rep)
  return Training(network=network, tx=tx, schedule=schedule, num_steps=num_steps, step=step,
                  views=views)
