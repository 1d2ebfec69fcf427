"""The pretraining recipe: the network, optimiser and jitted step of PretrainOptions on a mesh.

``build_training`` turns the options (options.programs.pretrain_options) and a
mesh into the network (dtype and convolutions for the mesh's platform), the
optimiser, the schedule and the jitted step. The pretraining program, the
compile planner and the benchmarks build their step here. Nothing here reads
data or files, so the planner needs neither the input pipeline nor TensorFlow.
"""
import dataclasses
from typing import Callable

import flax.linen as nn
import jax
import optax
from jax.sharding import Mesh

from mixsiam_jax import models, optim, sharding, train
from mixsiam_jax.options.programs import PretrainOptions
from mixsiam_jax.options.training import ModelOptions


@dataclasses.dataclass(frozen=True)
class Training:
  """What the loop needs, built from the options and a mesh.

  Attributes:
    network: the MixSiam network (dtype and convolution chosen for the mesh's platform).
    tx: the optimiser.
    schedule: the encoder's learning-rate schedule.
    num_steps: training length.
    step: the jitted step ``(state, batch, rng) -> (state, metrics)``; donates the state.
    step_function: the same step unjitted and outside the mesh's context; the
      compile planner counts its FLOPs (inside the context, a shard_map body such
      as each device's weight-gradient convolution counts for one device only).
    views: the jitted view preparation ``(batch, rng, step) -> views`` (previews).
  """
  network: nn.Module
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  num_steps: int
  step: Callable
  step_function: Callable
  views: Callable


def build_training(opts: PretrainOptions, mesh: Mesh, num_examples: int,
                   num_classes: int) -> Training:
  """The network, optimiser and jitted step of a pretraining run on ``mesh``.

  Args:
    opts: the validated options.
    mesh: the data-parallel mesh; its devices decide dtype and convolutions.
    num_examples: size of the training set (for epochs -> steps).
    num_classes: classes of the training data (0: unlabelled); the online
      probe's output when opts.online_probe.

  Returns:
    A Training.
  """
  network = models.MixSiamNetwork(model_options(opts, num_classes), sharding.mesh_platform(mesh))
  optimization = optim.create_optimization(
      opts.optim, num_train_steps=opts.num_train_steps, num_epochs=opts.num_epochs,
      num_examples=num_examples, batch_size=opts.batch_size, has_predictor=True)
  photometric = opts.photometric if opts.photometric_on_device else None
  crop_size = opts.image_size if opts.data.resize_on_device else None
  step_function = train.make_train_step(optimization.schedule, opts.method, photometric,
                                        crop_size)
  rep = sharding.replicated(mesh)
  views = jax.jit(train.make_view_fn(opts.method, photometric, crop_size),
                  in_shardings=(sharding.batch_sharded(mesh), rep, rep), out_shardings=rep)
  return Training(network=network, tx=optimization.tx, schedule=optimization.schedule,
                  num_steps=optimization.num_steps,
                  step=train.jit_train_step(step_function, mesh), step_function=step_function,
                  views=views)


def model_options(opts: PretrainOptions, num_classes: int) -> ModelOptions:
  """The trained model: opts.model with the online probe's classes (0 when it is off)."""
  return dataclasses.replace(opts.model,
                             num_classes=max(num_classes, 0) if opts.online_probe else 0)
