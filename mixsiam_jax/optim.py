"""Optimisers and schedules (optax), with the official SimSiam conventions.

- Learning rate = base_lr x global_batch / 256, cosine-decayed to 0 per step,
  with an optional linear warm-up.
- SGD adds weight_decay x param to the gradient before momentum, on every
  parameter (BN included), exactly as torch.optim.SGD(weight_decay=...) does.
- The predictor may keep the initial learning rate (official --fix-pred-lr).
- LARS (linear probe) follows the official code: weight decay and the trust
  ratio apply only to parameters with more than one dimension.
"""
import dataclasses
from typing import Any, Union

import jax
import optax

from mixsiam_jax.errors import UserError
from mixsiam_jax.options.training import OptimOptions


def steps(name: str, *, steps: int, epochs: float, num_examples: int,  # pylint: disable=redefined-outer-name
          batch_size: int) -> int:
  """Turns a duration given in steps or in epochs into steps (big_vision's ``u.steps``).

  Args:
    name: what the duration is, for the error message (e.g. 'num_train_steps').
    steps: the duration in steps; used when > 0.
    epochs: the duration in epochs of ``num_examples``, used when ``steps`` <= 0.
    num_examples: size of the data set one epoch goes through.
    batch_size: global examples per step.

  Returns:
    The number of steps (an epoch is num_examples // batch_size full batches).

  Raises:
    UserError: the duration is empty, or the batch is larger than the data set.
  """
  if steps > 0:
    return int(steps)
  if epochs <= 0:
    return 0
  steps_per_epoch = num_examples // batch_size
  if steps_per_epoch == 0:
    raise UserError(f"batch_size={batch_size} is larger than the data set ({num_examples} "
                    f"examples), so {name} cannot be derived from epochs; lower "
                    "--config.batch_size.")
  return int(epochs * steps_per_epoch)


def scaled_learning_rate(base_lr: float, global_batch_size: int) -> float:
  """The linear scaling rule lr = base_lr x batch / 256."""
  return base_lr * global_batch_size / 256.0


def cosine_schedule(peak_lr: float, total_steps: int, warmup_steps: int = 0) -> optax.Schedule:
  """Per-step cosine decay from ``peak_lr`` to 0 over ``total_steps``.

  Args:
    peak_lr: learning rate after warm-up.
    total_steps: length of the whole schedule, warm-up included.
    warmup_steps: linear warm-up from 0 (0: none).

  Returns:
    An optax schedule step -> learning rate.
  """
  if total_steps <= 0:
    raise ValueError(f"total_steps={total_steps} must be positive.")
  if not 0 <= warmup_steps < total_steps:
    raise ValueError(f"warmup_steps={warmup_steps} must lie in [0, total_steps={total_steps}).")
  if warmup_steps == 0:
    return optax.cosine_decay_schedule(peak_lr, total_steps)
  return optax.warmup_cosine_decay_schedule(0.0, peak_lr, warmup_steps, total_steps, end_value=0.0)


def create_sgd(learning_rate: Union[float, optax.Schedule], momentum: float,
               weight_decay: float) -> optax.GradientTransformation:
  """torch.optim.SGD: g += wd * p; buf = momentum * buf + g; p -= lr * buf.

  Args:
    learning_rate: a float or an optax schedule.
    momentum: heavy-ball momentum.
    weight_decay: L2 coefficient added to the gradient of every parameter.

  Returns:
    An optax GradientTransformation.
  """
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.sgd(learning_rate, momentum=momentum))


def _predictor_label(params: Any) -> Any:
  """Labels the top-level 'predictor' subtree 'predictor' and everything else 'default'."""
  return {k: jax.tree.map(lambda _: "predictor" if k == "predictor" else "default", v)
          for k, v in params.items()}


def create_pretrain_optimizer(*, schedule: optax.Schedule, peak_lr: float, momentum: float = 0.9,
                              weight_decay: float = 1e-4,
                              fix_predictor_lr: bool = True) -> optax.GradientTransformation:
  """SGD for pretraining, optionally holding the predictor at ``peak_lr``.

  Args:
    schedule: learning-rate schedule of the encoder (see cosine_schedule).
    peak_lr: the predictor's constant learning rate when fix_predictor_lr.
    momentum: SGD momentum.
    weight_decay: L2 coefficient added to the gradient of every parameter.
    fix_predictor_lr: keep the predictor's learning rate constant.

  Returns:
    An optax GradientTransformation over the network's params
    ({'backbone', 'projector', 'predictor'}).
  """
  if not fix_predictor_lr:
    return create_sgd(schedule, momentum, weight_decay)
  return optax.multi_transform(
      {"default": create_sgd(schedule, momentum, weight_decay),
       "predictor": create_sgd(peak_lr, momentum, weight_decay)},
      _predictor_label)


def _is_matrix(params: Any) -> Any:
  return jax.tree.map(lambda p: p.ndim > 1, params)


def create_lars(*, schedule: Union[float, optax.Schedule], momentum: float = 0.9,
                weight_decay: float = 0.0,
                trust_coefficient: float = 0.001) -> optax.GradientTransformation:
  """LARS as in the official SimSiam linear-probe code.

  Args:
    schedule: learning rate or schedule.
    momentum: heavy-ball momentum.
    weight_decay: applied to parameters with ndim > 1 only.
    trust_coefficient: LARS eta.

  Returns:
    An optax GradientTransformation.
  """
  # Composed rather than optax.lars, which scales by the learning rate before the
  # momentum; the official code keeps the learning rate outside the momentum buffer.
  return optax.chain(
      optax.masked(optax.add_decayed_weights(weight_decay), _is_matrix),
      optax.masked(optax.scale_by_trust_ratio(trust_coefficient=trust_coefficient, eps=0.0),
                   _is_matrix),
      optax.trace(decay=momentum),
      optax.scale_by_learning_rate(schedule))


def create_optimizer(options: OptimOptions, schedule: optax.Schedule, peak_lr: float, *,
                     has_predictor: bool) -> optax.GradientTransformation:
  """The optimiser that ``options`` names, with its hyper-parameters.

  Args:
    options: validated optimiser options ('sgd' or 'lars').
    schedule: learning-rate schedule (see cosine_schedule).
    peak_lr: the predictor's constant learning rate when options.fix_predictor_lr.
    has_predictor: whether the parameters have a top-level 'predictor' (the
      pretraining network) whose learning rate fix_predictor_lr may hold; a
      linear classifier has none.

  Returns:
    An optax GradientTransformation.
  """
  if options.name == "lars":
    return create_lars(schedule=schedule, momentum=options.momentum,
                       weight_decay=options.weight_decay)
  return create_pretrain_optimizer(
      schedule=schedule, peak_lr=peak_lr, momentum=options.momentum,
      weight_decay=options.weight_decay,
      fix_predictor_lr=options.fix_predictor_lr and has_predictor)


@dataclasses.dataclass(frozen=True)
class Optimization:
  """A run's length, learning-rate schedule and optimiser.

  Attributes:
    num_steps: the run's length in steps.
    schedule: the (encoder's) learning-rate schedule.
    tx: the optimiser.
  """
  num_steps: int
  schedule: optax.Schedule
  tx: optax.GradientTransformation


def create_optimization(options: OptimOptions, *, num_train_steps: int, num_epochs: float,
                        num_examples: int, batch_size: int,
                        has_predictor: bool) -> Optimization:
  """The length, cosine schedule and optimiser of a training run (pretraining or a probe).

  Args:
    options: optimiser, base learning rate and warm-up.
    num_train_steps: steps, or -1 to derive them from ``num_epochs``.
    num_epochs: epochs of the training set, when num_train_steps is -1.
    num_examples: size of the training set.
    batch_size: the global batch (scales the learning rate: base_lr x batch / 256).
    has_predictor: the parameters have a top-level 'predictor' (pretraining).

  Returns:
    The Optimization.
  """
  num_steps = steps("num_train_steps", steps=num_train_steps, epochs=num_epochs,
                    num_examples=num_examples, batch_size=batch_size)
  warmup_steps = steps("optim.warmup_epochs", steps=0, epochs=options.warmup_epochs,
                       num_examples=num_examples, batch_size=batch_size)
  peak_lr = scaled_learning_rate(options.base_lr, batch_size)
  schedule = cosine_schedule(peak_lr, num_steps, warmup_steps)
  tx = create_optimizer(options, schedule, peak_lr, has_predictor=has_predictor)
  return Optimization(num_steps=num_steps, schedule=schedule, tx=tx)
