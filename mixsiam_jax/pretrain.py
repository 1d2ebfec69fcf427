"""The pretraining program: config -> options -> data, model, optimiser, step -> the shared loop.

This is the one place below main.py that reads a pretraining config. It turns
the config into validated options once (``options_from_config``); ``build_training``
makes the network, optimiser and jitted step from those options and a mesh, and
is what the compile planner uses too; ``train_and_evaluate`` checks the data and
the workdir before writing anything, then hands the step to ``loop.run``.
"""
import contextlib
import dataclasses
import functools
import itertools
import json
import os
from typing import Any, Callable, Dict, Iterator, Optional, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import periodic_actions
from jax.sharding import Mesh

from mixsiam_jax import augment, checkpoint, loop, models, optim, sharding, train
from mixsiam_jax import metric_writer, workdir as workdir_lib
from mixsiam_jax.data import iterate, pipeline, sources
from mixsiam_jax.options import (MethodOptions, ModelOptions, OptimOptions, OptionsError,
                                 PhotometricOptions)

# Re-exported: tests and callers catch it from the program they ran.
TrainingError = loop.TrainingError
# The data sets of the run: dataset, split, number of examples and classes.
DATA_FILE = "data.json"


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
    num_train_steps: training length in steps (<= 0: from num_epochs).
    num_epochs: training length in epochs, when num_train_steps <= 0.
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
    if self.num_train_steps <= 0 and self.num_epochs <= 0:
      raise OptionsError(f"num_train_steps={self.num_train_steps} and num_epochs="
                         f"{self.num_epochs}: set one of them to a positive value.")
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
  num_steps = loop.steps("num_train_steps", steps=opts.num_train_steps, epochs=opts.num_epochs,
                         num_examples=num_examples, batch_size=opts.batch_size)
  warmup_steps = loop.steps("optim.warmup_epochs", steps=0, epochs=opts.optim.warmup_epochs,
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


def _preview_images(views: jax.Array, count: int = 4) -> np.ndarray:
  """[B, V, H, W, 3] normalised views -> uint8 [count * V, H, W, 3] for TensorBoard."""
  mean = np.asarray(augment.IMAGENET_MEAN, np.float32)
  std = np.asarray(augment.IMAGENET_STD, np.float32)
  # The local copy of the (replicated) views: slicing the global array would be a
  # computation that every process must join, and this runs on process 0 only.
  x = np.asarray(views.addressable_data(0)[:count], np.float32) * std + mean
  x = np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)
  return x.reshape((-1,) + x.shape[2:])


def _describe_data(config: ml_collections.ConfigDict, train_info: sources.DatasetInfo
                   ) -> Dict[str, Dict[str, Any]]:
  """What the run trains and evaluates on (logged at the start and written to data.json)."""
  described = {"train": dict(dataset=config.dataset, split=config.train_split,
                             num_examples=train_info.num_examples,
                             num_classes=train_info.num_classes)}
  if config.eval_dataset:
    info = sources.get_dataset_info(config.eval_dataset, config.eval_split, field="eval_dataset")
    described["eval"] = dict(dataset=config.eval_dataset, split=config.eval_split,
                             num_examples=info.num_examples, num_classes=info.num_classes)
  for role, d in described.items():
    logging.info("%s data: %s split %r: %d examples, %d classes.", role, d["dataset"],
                 d["split"], d["num_examples"], d["num_classes"])
  return described


def state_functions(opts: PretrainOptions, training: Training, mesh: Mesh):
  """(step rng, init, state -> checkpoint tree, (state, tree) -> state) of a pretraining run.

  Args:
    opts: the run's options (the seed).
    training: from build_training.
    mesh: the data-parallel mesh.

  Returns:
    The replicated base key of the steps, a function building the initial
    TrainState on ``mesh``, and the two checkpoint conversions.


  The seed's key splits into the initialisation key and the run's base key, which
  drives every step's augmentations through fold_in.
  """
  init_rng, step_rng = jax.random.split(jax.random.key(opts.seed))
  step_rng = sharding.replicated_key(step_rng, mesh)
  init = functools.partial(train.create_train_state, init_rng, training.network, training.tx,
                           image_size=opts.image_size, mesh=mesh)
  to_tree = lambda state: checkpoint.state_tree(state, step_rng)
  from_tree = lambda state, tree: state.replace(
      step=tree["step"], params=tree["params"], batch_stats=tree["batch_stats"],
      opt_state=tree["opt_state"])
  return step_rng, init, to_tree, from_tree


def _write_preview(writer: Any, batches: Iterator[Any], training: Training, rng: jax.Array,
                   step: jax.Array, start_step: int) -> Iterator[Any]:
  """Writes x1 / x2 / x_m of the first batch to TensorBoard; returns the batches, that one first.

  Every process computes the views (a global computation); process 0 writes them.
  """
  first = next(batches)
  views = training.views(first, rng, step)
  if jax.process_index() == 0:
    writer.write_images(start_step + 1, {"views": _preview_images(views)})
  return itertools.chain([first], batches)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       devices: Optional[Sequence[jax.Device]] = None) -> Dict[str, float]:
  """Pretrains MixSiam as configured, resuming from ``workdir`` if it holds a run.

  Everything (config, workdir, data sets, checkpoint) is checked before anything
  is written into the workdir, so a refused or corrected run leaves no trace.

  Args:
    config: a pretraining config (see configs/cifar10.py).
    workdir: directory for checkpoints, logs, metrics.jsonl, config.json and data.json.
    devices: devices of the data mesh (default: all devices of all processes).

  Returns:
    The last logged metrics (empty if the run had already finished).
  """
  options_from_config(config)  # Every field is checked before the data are opened.
  if config.get("pretrained"):
    raise OptionsError(f"pretrained={config.pretrained!r} is not used by pretraining (it names "
                       "the run that configs/knn.py and configs/linear_probe.py evaluate); "
                       "remove --config.pretrained.")
  mesh = sharding.create_mesh(devices)
  sharding.check_global_batch(config.batch_size, mesh)
  info = sources.get_dataset_info(config.dataset, config.train_split)
  opts = options_from_config(config, info.num_classes)
  training = build_training(opts, mesh, info.num_examples)
  loop_options = loop.LoopOptions(num_steps=training.num_steps,
                                  log_every_steps=config.log_every_steps,
                                  checkpoint_every_steps=config.checkpoint_every_steps,
                                  eval_every_steps=config.eval_every_steps)
  path = workdir_lib.check_workdir(workdir)
  config_dict = json.loads(config.to_json_best_effort())
  workdir_lib.check_resume(path, config_dict)
  directory = checkpoint.checkpoint_dir(path)
  start_step = checkpoint.latest_step(directory)
  if start_step >= training.num_steps:
    logging.info("This run already finished (step %d of %d); nothing to do.", start_step,
                 training.num_steps)
    return {}
  described = _describe_data(config, info)
  data = pipeline.create_pretrain_dataset(pipeline.TrainDataOptions(
      dataset=config.dataset, split=config.train_split, global_batch_size=opts.batch_size,
      image_size=opts.image_size, seed=opts.seed, crop_scale=tuple(config.data.crop_scale),
      host_photometric=None if opts.photometric_on_device else opts.photometric,
      skip_bad_images=config.data.skip_bad_images), start_step=start_step)
  knn_monitor = _make_knn_monitor(config, training.network, mesh)

  step_rng, init, to_tree, from_tree = state_functions(opts, training, mesh)
  manager = checkpoint.create_manager(
      directory, keep=config.keep_checkpoints,
      keep_every_steps=config.keep_checkpoints_every_steps,
      async_save=config.async_checkpointing)
  with contextlib.ExitStack() as on_error:
    on_error.callback(manager.close)  # loop.run closes it from here on.
    state, restored_step, _ = loop.restore_or_init(manager, init, to_tree, from_tree)
    assert restored_step == start_step, (restored_step, start_step)
    workdir_lib.start_run(path, config_dict, start_step)
    workdir_lib.atomic_write_text(os.path.join(path, DATA_FILE),
                                  json.dumps(described, indent=2) + "\n")
    writer = metric_writer.create_writer(path, jax.process_index() == 0)
    if start_step == 0:
      writer.write_hparams({k: v for k, v in workdir_lib.flatten_config(config_dict).items()
                            if isinstance(v, (int, float, str, bool))})
    batches = sharding.prefetch_to_mesh(iterate.numpy_batches(data), mesh, config.data.prefetch)
    batches = _write_preview(writer, batches, training, step_rng, state.step, start_step)
    hooks = []
    if jax.process_index() == 0 and config.profile_steps:
      hooks.append(periodic_actions.Profile(logdir=path, num_profile_steps=config.profile_steps,
                                            first_profile=start_step + 10))
    on_error.pop_all()
  logging.info("Training %d steps from step %d: %d devices, %d processes, global batch %d.",
               training.num_steps, start_step, mesh.devices.size, jax.process_count(),
               opts.batch_size)
  meta = {"model": model_meta(opts.model), "image_size": opts.image_size,
          "dataset": config.dataset, "train_split": config.train_split, "seed": opts.seed}
  evaluate = None
  if knn_monitor is not None:
    evaluate = lambda state: knn_monitor({"params": state.params,
                                          "batch_stats": state.batch_stats})
  return loop.run(
      lambda state, batch: training.step(state, batch, step_rng), state,
      batches, start_step=start_step, options=loop_options,
      manager=manager, to_tree=to_tree, meta=meta, writer=writer,
      num_processes=jax.process_count(), evaluate=evaluate, hooks=hooks)


def _make_knn_monitor(config, network, mesh) -> Optional[Callable[[Any], Dict[str, float]]]:
  """A function state -> {'knn_top1', 'knn_top5'} if an eval data set is configured."""
  if not config.eval_dataset:
    return None
  from mixsiam_jax.evaluation import knn  # pylint: disable=g-import-not-at-top
  return knn.monitor_for_network(network, mesh, knn.knn_options(config))
