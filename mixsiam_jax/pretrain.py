"""The pretraining program: config -> data, model, optimiser -> the loop.

This is the one place below main.py that reads the config; everything it calls
takes plain arguments. The loop resumes from the newest checkpoint of the
workdir, logs through clu writers (TensorBoard, console, metrics.jsonl), saves
Orbax checkpoints asynchronously, stops on non-finite values before they reach
a checkpoint, and saves and exits cleanly on SIGTERM (preemption notice).
"""
import json
import math
import signal
import threading
import time
from typing import Any, Callable, Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import periodic_actions
from jax.experimental import multihost_utils

from mixsiam_jax import augment, checkpoint, input_pipeline, losses, models, optim, sharding, train
from mixsiam_jax import workdir as workdir_lib


class TrainingError(RuntimeError):
  """Training cannot go on (e.g. a non-finite loss)."""


# ---------------------------------------------------------------------------
# Config -> plain arguments. Everything is checked here, before anything compiles.
# ---------------------------------------------------------------------------
def network_kwargs(config: ml_collections.ConfigDict, num_classes: int = 0) -> Dict[str, Any]:
  """The keyword arguments of models.create_network from ``config.model``.

  Args:
    config: the pretraining config.
    num_classes: classes of the online probe (used when config.online_probe).
  """
  m = config.model
  return dict(depth=m.depth, width=m.width, stem=m.stem, projector_layers=m.projector_layers,
              projector_hidden_dim=m.projector_hidden_dim, projector_dim=m.projector_dim,
              predictor_hidden_dim=m.predictor_hidden_dim,
              dtype=compute_dtype(config.half_precision), remat=m.remat,
              conv_impl=m.get("conv_impl", "auto"),
              num_classes=num_classes if config.online_probe else 0)


def compute_dtype(half_precision: Optional[bool]) -> str:
  """The dtype name for models.create_network from the ``half_precision`` switch.

  Args:
    half_precision: None (bfloat16 on GPU/TPU, float32 on CPU), True or False.

  Returns:
    'auto', 'bfloat16' or 'float32'.

  Raises:
    ValueError: for anything but None, True or False.
  """
  if half_precision is None:
    return "auto"
  if not isinstance(half_precision, bool):
    raise ValueError(f"half_precision={half_precision!r} must be true, false or unset (None: "
                     "bfloat16 on GPU/TPU, float32 on CPU).")
  return "bfloat16" if half_precision else "float32"


def photometric_kwargs(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """Colour jitter, grayscale and blur options from ``config.data``."""
  d = config.data
  return dict(color_jitter=tuple(d.color_jitter), color_jitter_prob=d.color_jitter_prob,
              grayscale_prob=d.grayscale_prob, blur_prob=d.blur_prob,
              blur_sigma=tuple(d.blur_sigma))


def method_kwargs(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """The method options of train.make_train_step from ``config.method``."""
  m = config.method
  return dict(lam=m.lam, aggregation=m.aggregation, mixture=m.mixture, mix_mode=m.mix_mode,
              mix_lambda=m.mix_lambda, mix_alpha=m.mix_alpha, mix_prob=m.mix_prob)


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first invalid field of a pretraining config."""
  losses.check_method_options(config.method.lam, config.method.mix_lambda,
                              config.method.aggregation)
  augment.check_mix_options(config.method.mix_mode, config.method.mix_lambda,
                            config.method.mix_alpha, config.method.mix_prob)
  augment.check_photometric_options(**photometric_kwargs(config))
  models.create_network(**network_kwargs(config))
  for name in ("batch_size", "log_every_steps", "checkpoint_every_steps", "image_size"):
    if not (isinstance(config[name], int) and config[name] > 0):
      raise ValueError(f"{name}={config[name]!r} must be a positive integer.")
  if config.num_train_steps <= 0 and config.num_epochs <= 0:
    raise ValueError(f"num_train_steps={config.num_train_steps} and num_epochs="
                     f"{config.num_epochs}: set one of them to a positive value.")
  if config.optim.name != "sgd":
    raise ValueError(f"optim.name={config.optim.name!r}: pretraining uses 'sgd' (LARS is for "
                     "the linear probe).")


def total_steps(config: ml_collections.ConfigDict, num_examples: int) -> int:
  """Training length: num_train_steps, or num_epochs of full global batches."""
  if config.num_train_steps > 0:
    return int(config.num_train_steps)
  steps_per_epoch = num_examples // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"batch_size={config.batch_size} is larger than the data set "
                     f"({num_examples} examples).")
  return int(config.num_epochs * steps_per_epoch)


# ---------------------------------------------------------------------------
# Pieces of the loop.
# ---------------------------------------------------------------------------
class _StopFlag:
  """Whether to save and stop now: the preemption notice (SIGTERM) has arrived.

  One process: a SIGTERM handler sets a flag, polled once per step. Several
  processes: they must stop at the same step (the save is collective), so we
  ask JAX's preemption service, which jax.distributed.initialize() starts and
  which agrees on a step across hosts; installing our own handler there would
  replace its signal handler.
  """

  def __init__(self):
    self._requested = False
    self._previous = None
    self._multiprocess = jax.process_count() > 1

  def __enter__(self):
    if not self._multiprocess and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    logging.warning("Received signal %d: saving a checkpoint and exiting.", signum)
    self._requested = True

  def requested(self, step: int) -> bool:
    """True if training should save at ``step`` and stop (the same step on every process)."""
    if self._multiprocess:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._requested

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _mean_metrics(history) -> Dict[str, float]:
  """Averages a list of per-step metric dicts (device arrays) on the host."""
  host = jax.device_get(history)
  return {k: float(np.mean([h[k] for h in host])) for k in host[0]}


def _check_finite(metrics: Dict[str, float], step: int) -> None:
  bad = [k for k in ("loss", "grad_norm", "param_norm") if not math.isfinite(metrics.get(k, 0.0))]
  if bad:
    raise TrainingError(
        f"non-finite {', '.join(bad)} at step {step} ({', '.join(f'{k}={metrics[k]}' for k in bad)}); "
        "stopping before anything non-finite is checkpointed; the newest checkpoint is still "
        "good. Check the data, or start over in a new --workdir with a lower optim.base_lr "
        "(a resumed run must keep its optimiser settings).")


def _preview_images(views: jax.Array, count: int = 4) -> np.ndarray:
  """[B, V, H, W, 3] normalised views -> uint8 [count * V, H, W, 3] for TensorBoard."""
  mean = np.asarray(augment.IMAGENET_MEAN, np.float32)
  std = np.asarray(augment.IMAGENET_STD, np.float32)
  # The local copy of the (replicated) views: slicing the global array would be a
  # computation that every process must join, and this runs on process 0 only.
  x = np.asarray(views.addressable_data(0)[:count], np.float32) * std + mean
  x = np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)
  return x.reshape((-1,) + x.shape[2:])


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       devices: Optional[Sequence[jax.Device]] = None) -> Dict[str, float]:
  """Pretrains MixSiam as configured, resuming from ``workdir`` if it holds a run.

  Args:
    config: a pretraining config (see configs/cifar10.py).
    workdir: directory for checkpoints, logs, metrics.jsonl and config.json.
    devices: devices of the data mesh (default: all devices of all processes).

  Returns:
    The last logged metrics (empty if the run had already finished).
  """
  check_config(config)
  workdir = workdir_lib.prepare_workdir(workdir)
  mesh = sharding.create_mesh(devices)
  sharding.check_global_batch(config.batch_size, mesh)
  info = input_pipeline.get_dataset_info(config.dataset, config.train_split)
  num_steps = total_steps(config, info.num_examples)
  config_dict = json.loads(config.to_json_best_effort())
  # Refuse an incompatible workdir before touching anything in it.
  old_config = workdir_lib.read_config(workdir)
  if old_config is not None:
    workdir_lib.check_resume_config(old_config, config_dict)

  model_kwargs = network_kwargs(config, max(info.num_classes, 0))
  network = models.create_network(**model_kwargs)
  peak_lr = optim.scaled_learning_rate(config.optim.base_lr, config.batch_size)
  steps_per_epoch = max(1, info.num_examples // config.batch_size)
  schedule = optim.cosine_schedule(peak_lr, num_steps,
                                   int(config.optim.warmup_epochs * steps_per_epoch))
  tx = optim.create_pretrain_optimizer(schedule=schedule, peak_lr=peak_lr,
                                       momentum=config.optim.momentum,
                                       weight_decay=config.optim.weight_decay,
                                       fix_predictor_lr=config.optim.fix_predictor_lr)
  manager = checkpoint.create_manager(
      checkpoint.checkpoint_dir(workdir), keep=config.keep_checkpoints,
      keep_every_steps=config.keep_checkpoints_every_steps,
      async_save=config.async_checkpointing)
  meta = {"model": model_kwargs, "image_size": config.image_size,
          "dataset": config.dataset, "train_split": config.train_split, "seed": config.seed}
  start_step = manager.latest_step() or 0
  if start_step >= num_steps:
    logging.info("This run already finished (step %d of %d); nothing to do.", start_step, num_steps)
    manager.close()
    return {}
  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
  step_rng = sharding.replicated_key(step_rng, mesh)
  state = train.create_train_state(init_rng, network, tx, image_size=config.image_size, mesh=mesh)
  if start_step:
    tree, _ = checkpoint.restore(manager, start_step, checkpoint.state_tree(state, step_rng))
    state = state.replace(step=tree["step"], params=tree["params"],
                          batch_stats=tree["batch_stats"], opt_state=tree["opt_state"])
    step_rng = jax.random.wrap_key_data(tree["rng"])
    logging.info("Resumed from %s at step %d.", checkpoint.checkpoint_dir(workdir), start_step)
  workdir_lib.save_config(workdir, config_dict, start_step)
  workdir_lib.truncate_metrics(workdir, start_step)
  is_main = jax.process_index() == 0
  writer = workdir_lib.create_writer(workdir, is_main)
  if start_step == 0:
    writer.write_hparams({k: v for k, v in workdir_lib.flatten_config(config_dict).items()
                          if isinstance(v, (int, float, str, bool))})

  photometric = None if not config.data.photometric_on_device else photometric_kwargs(config)
  step_fn = train.jit_train_step(
      train.make_train_step(schedule=schedule, photometric=photometric, **method_kwargs(config)),
      mesh)
  data = input_pipeline.create_pretrain_dataset(
      config.dataset, config.train_split, global_batch_size=config.batch_size,
      image_size=config.image_size, seed=config.seed, crop_scale=tuple(config.data.crop_scale),
      photometric_on_host=not config.data.photometric_on_device,
      start_step=start_step, skip_bad_images=config.data.skip_bad_images,
      **photometric_kwargs(config))
  batches = sharding.prefetch_to_mesh(data.as_numpy_iterator(), mesh, config.data.prefetch)

  knn_monitor = _make_knn_monitor(config, network, mesh)
  hooks = []
  if is_main:
    hooks.append(periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer,
                                                 every_steps=config.log_every_steps))
    if config.profile_steps:
      hooks.append(periodic_actions.Profile(logdir=workdir, num_profile_steps=config.profile_steps,
                                            first_profile=start_step + 10))
  rep = sharding.replicated(mesh)
  preview = jax.jit(train.make_view_fn(photometric=photometric, **method_kwargs(config)),
                    in_shardings=(sharding.batch_sharded(mesh), rep, rep), out_shardings=rep)

  logging.info("Training %d steps from step %d: %d devices, %d processes, global batch %d.",
               num_steps, start_step, jax.device_count(), jax.process_count(), config.batch_size)
  history, last = [], {}
  step = start_step
  with _StopFlag() as stop:
    try:
      for step in range(start_step + 1, num_steps + 1):
        batch = next(batches)
        if step == start_step + 1:  # A global computation: every process runs it.
          views = preview(batch, step_rng, state.step)
          if is_main:
            writer.write_images(step, {"views": _preview_images(views)})
        state, metrics = step_fn(state, batch, step_rng)
        history.append(metrics)
        for hook in hooks:
          hook(step)
        log_now = step % config.log_every_steps == 0 or step == num_steps
        save_now = step % config.checkpoint_every_steps == 0 or step == num_steps
        stop_now = stop.requested(step)
        if log_now:
          last = _mean_metrics(history)
          history = []
          _check_finite(last, step)
          writer.write_scalars(step, last)
        elif save_now or stop_now:
          _check_finite(_mean_metrics([metrics]), step)
        if knn_monitor and ((config.eval_every_steps and step % config.eval_every_steps == 0)
                            or step == num_steps):
          writer.write_scalars(step, knn_monitor({"params": state.params,
                                                  "batch_stats": state.batch_stats}))
        if save_now or stop_now:
          checkpoint.save(manager, step, checkpoint.state_tree(state, step_rng), meta)
        if stop_now:
          logging.warning("Stopped at step %d on request; rerun the same command to resume.", step)
          break
    finally:
      manager.wait_until_finished()
      manager.close()
      writer.flush()
      writer.close()
  return last


def _make_knn_monitor(config, network, mesh) -> Optional[Callable[[Any], Dict[str, float]]]:
  """A function state -> {'knn_top1', 'knn_top5'} if an eval data set is configured."""
  if not config.eval_dataset:
    return None
  from mixsiam_jax import evaluate  # pylint: disable=g-import-not-at-top
  return evaluate.make_knn_monitor(
      network=network, mesh=mesh, train_dataset=config.dataset, train_split=config.train_split,
      eval_dataset=config.eval_dataset, eval_split=config.eval_split,
      image_size=config.image_size, batch_size=config.eval_batch_size,
      transform=config.data.eval_transform, k=config.knn.k, temperature=config.knn.temperature)
