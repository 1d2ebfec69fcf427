"""The pretraining program: config -> options -> data, model, optimiser, step -> the shared loop.

This is the one place below main.py that reads a pretraining config. The recipe
(mixsiam_jax/recipe.py) turns the config into validated options and builds the
network, optimiser and jitted step from them on the mesh; ``train_and_evaluate``
checks the data and the workdir before writing anything, then hands the step to
``loop.run``.
"""
import contextlib
import functools
import json
import os
from typing import Any, Callable, Dict, Iterator, Optional, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import periodic_actions
from jax.sharding import Mesh

from mixsiam_jax import augment, checkpoint, loop, sharding, train
from mixsiam_jax import metric_writer, workdir as workdir_lib
from mixsiam_jax.data import DatasetError, decode, iterate, pipeline, sources
from mixsiam_jax.options import OptionsError
from mixsiam_jax.recipe import (PretrainOptions, Training, build_training, model_meta,
                                options_from_config)

# Re-exported: tests and callers catch it from the program they ran.
TrainingError = loop.TrainingError
# The data sets of the run: dataset, split, number of examples and classes.
DATA_FILE = "data.json"


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


def _with_preview(writer: Any, batches: Iterator[Any], training: Training, rng: jax.Array,
                  step: jax.Array, start_step: int) -> Iterator[Any]:
  """The batches; the first one's x1 / x2 / x_m are written to TensorBoard when it is taken.

  Every process computes the views (a global computation); process 0 writes
  them. Closing this generator closes ``batches``.
  """
  try:
    first = next(batches)
    views = training.views(first, rng, step)
    if jax.process_index() == 0:
      writer.write_images(start_step + 1, {"views": _preview_images(views)})
    yield first
    yield from batches
  finally:
    batches.close()


def _check_same_data(path: str, described: Dict[str, Dict[str, Any]]) -> None:
  """Refuses a resume on data sets that differ from the ones data.json recorded."""
  recorded_path = os.path.join(path, DATA_FILE)
  if not os.path.exists(recorded_path):
    return
  try:
    with open(recorded_path) as f:
      recorded = json.load(f)
  except (OSError, ValueError) as e:
    raise workdir_lib.WorkdirError(f"{recorded_path} is unreadable ({e}); restore it or use a "
                                   "fresh --workdir.") from None
  for role, now in described.items():
    before = recorded.get(role)
    keys = ("dataset", "split", "num_examples", "num_classes")
    if before and any(before.get(k) != now[k] for k in keys):
      raise DatasetError(
          f"the {role} data set differs from the one this run started on ({DATA_FILE}: "
          f"{before.get('num_examples')} examples in {before.get('num_classes')} classes of "
          f"{before.get('dataset')} split {before.get('split')!r}; now {now['num_examples']} in "
          f"{now['num_classes']} of {now['dataset']} split {now['split']!r}). Restore the data "
          "and rerun, or start a new run in a new --workdir.")


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
  _check_same_data(path, described)
  data_options = pipeline.TrainDataOptions(
      dataset=config.dataset, split=config.train_split, global_batch_size=opts.batch_size,
      image_size=opts.image_size, seed=opts.seed, crop_scale=tuple(config.data.crop_scale),
      host_photometric=None if opts.photometric_on_device else opts.photometric,
      skip_bad_images=config.data.skip_bad_images)
  bad_images = decode.BadImageLog()
  # Built now, before anything is written, so that it checks the data set; read later.
  first_data = pipeline.create_pretrain_dataset(data_options, start_step=start_step, expect=info,
                                                bad_images=bad_images)

  def training_data(step, checked):
    return pipeline.create_pretrain_dataset(data_options, start_step=step, expect=info,
                                            bad_images=bad_images, checked_decoding=checked)
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
    stream = iterate.numpy_batches(training_data, start=start_step, first=first_data,
                                   name=f"--config.dataset={config.dataset}")
    batches = sharding.prefetch_to_mesh(stream, mesh, config.data.prefetch)
    batches = _with_preview(writer, batches, training, step_rng, state.step, start_step)
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
