"""The linear-probe program: a linear classifier on frozen, pooled backbone features.

The probe is a step function on the shared loop (loop.py): resume or init,
a bounded number of steps in flight, SIGTERM checked every step, mean metrics,
checkpoints. The backbone stays in inference mode (BN running statistics) and
is checked bit-identical to the checkpoint at the end. A resumed probe keeps
the pretraining checkpoint step it started with (recorded in its checkpoints'
metadata). Accuracies are in percent.
"""
import dataclasses
import functools
import json
import os
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax.training import train_state
from jax.sharding import Mesh

from mixsiam_jax import checkpoint, loop, optim, sharding
from mixsiam_jax import metric_writer, workdir as workdir_lib
from mixsiam_jax.data import decode, iterate, pipeline
from mixsiam_jax.errors import UserError
from mixsiam_jax.evaluation import encoder, features, program
from mixsiam_jax.options import OptimOptions, OptionsError, check_duration


class ProbeError(UserError):
  """A probe workdir that cannot be resumed as asked."""


class ProbeState(train_state.TrainState):
  """The linear classifier's parameters and optimiser state."""


@dataclasses.dataclass(frozen=True)
class ProbeOptions:
  """How the classifier is trained (config fields of configs/linear_probe.py), validated.

  Attributes:
    augment: crop + flip every step (official) or features of the plain images.
    batch_size: global batch of the classifier.
    num_train_steps: training length in steps (-1: from num_epochs).
    num_epochs: training length in epochs of the training split, when num_train_steps is -1.
    optim: 'lars' or 'sgd' with its learning rate, momentum and weight decay.
    crop_scale: RandomResizedCrop area range of the augmented variant.
    seed: classifier initialisation and data order.
  """
  augment: bool
  batch_size: int
  num_train_steps: int
  num_epochs: float
  optim: OptimOptions
  crop_scale: Tuple[float, float] = (0.08, 1.0)
  seed: int = 0

  def __post_init__(self):
    if not isinstance(self.augment, bool):
      raise OptionsError(f"probe.augment={self.augment!r} must be true or false.")
    if isinstance(self.batch_size, bool) or not (isinstance(self.batch_size, int)
                                                 and self.batch_size > 0):
      raise OptionsError(f"batch_size={self.batch_size!r} must be a positive integer.")
    check_duration(self.num_train_steps, self.num_epochs)


def probe_options(config: ml_collections.ConfigDict) -> ProbeOptions:
  """ProbeOptions from a linear-probe config (raises OptionsError naming a bad field)."""
  o = config.optim
  return ProbeOptions(
      augment=config.probe.augment, batch_size=config.batch_size,
      num_train_steps=config.num_train_steps, num_epochs=config.num_epochs,
      optim=OptimOptions(name=o.name, base_lr=o.base_lr, momentum=o.momentum,
                         weight_decay=o.weight_decay, warmup_epochs=o.warmup_epochs,
                         fix_predictor_lr=False),
      crop_scale=tuple(config.data.crop_scale), seed=config.seed)


def linear_head(num_classes: int) -> nn.Dense:
  """The classifier; official main_lincls.py: fc.weight ~ N(0, 0.01), fc.bias = 0."""
  return nn.Dense(num_classes, kernel_init=nn.initializers.normal(0.01),
                  bias_init=nn.initializers.zeros)


def make_probe_step(embed_fn: Optional[encoder.EmbedFn], mesh: Mesh,
                    schedule: optax.Schedule) -> Callable:
  """``step(state, variables, batch) -> (state, metrics)`` for the linear classifier.

  Args:
    embed_fn: ``(variables, images) -> features`` to compute frozen features of
      augmented images inside the step, or None when batches carry features.
    mesh: the data mesh.
    schedule: the learning-rate schedule (reported as 'lr').

  Returns:
    The jitted step (probe state donated). batch is {'image' uint8 or
    'features' float, 'label' int}; metrics are probe_loss, probe_train_top1
    (percent of the batch) and lr.
  """
  rep, data = sharding.replicated(mesh), sharding.batch_sharded(mesh)

  def step(state, variables, batch):
    if embed_fn is not None:
      feats = embed_fn(variables, features.to_model_input(batch["image"]))
    else:
      feats = batch["features"]
    feats = jax.lax.stop_gradient(feats)

    def loss_fn(params):
      logits = state.apply_fn({"params": params}, feats)
      return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean(), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    top1 = 100.0 * jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    metrics = {"probe_loss": loss, "probe_train_top1": top1, "lr": schedule(state.step)}
    return state.apply_gradients(grads=grads), metrics

  return jax.jit(step, in_shardings=(rep, rep, data), out_shardings=(rep, rep),
                 donate_argnums=(0,))


def feature_batches(feats: np.ndarray, labels: np.ndarray, *, batch_size: int, seed: int,
                    start_step: int) -> Iterator[Dict[str, np.ndarray]]:
  """Endless shuffled batches of precomputed features; the order is a function of (seed, step)."""
  n = len(feats)
  steps_per_epoch = n // batch_size
  step = start_step
  while True:
    epoch, offset = divmod(step, steps_per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    idx = order[offset * batch_size:(offset + 1) * batch_size]
    yield {"features": feats[idx], "label": labels[idx].astype(np.int32)}
    step += 1


def probe_accuracy(head: nn.Module, params: Any, feats: np.ndarray,
                   labels: np.ndarray) -> Dict[str, float]:
  """{'probe_top1', 'probe_top5'} in percent of the classifier on features [N, F]."""
  logits = head.apply({"params": params}, jnp.asarray(feats))
  _, top = jax.lax.top_k(logits, min(5, logits.shape[-1]))
  hits = np.asarray(top) == labels[:, None]
  return {"probe_top1": 100.0 * float(hits[:, 0].mean()),
          "probe_top5": 100.0 * float(hits.any(1).mean())}


# ----------------------------------------------------------------- the program
@dataclasses.dataclass(frozen=True)
class _Probe:
  """Everything the probe's loop needs, built and checked before the workdir is written."""
  opts: ProbeOptions
  mesh: Mesh
  frozen: encoder.FrozenEncoder
  data: features.EvalData
  num_classes: int
  num_steps: int
  schedule: optax.Schedule
  tx: optax.GradientTransformation
  start_step: int


def _recorded_start(workdir: str) -> Tuple[int, Dict[str, Any]]:
  """(newest step, its metadata) of a probe workdir, the step read and checked; (0, {}) if new."""
  directory = checkpoint.checkpoint_dir(workdir)
  step = checkpoint.latest_step(directory)
  if not step:
    return 0, {}
  manager = checkpoint.create_manager(directory, read_only=True, async_save=False)
  try:
    return step, checkpoint.read_meta(manager, step)
  finally:
    manager.close()


def _restore_recorded(config: ml_collections.ConfigDict, mesh: Mesh, workdir: str,
                      recorded: Dict[str, Any]) -> encoder.FrozenEncoder:
  """The encoder of a new probe (newest step), or of a resumed one: the one it started on.

  A resumed probe restores the pretraining step its checkpoints record and
  checks the encoder's fingerprint against the recorded one, so a pretraining
  workdir replaced by another run (same path, same steps) is refused.

  Args:
    config: the probe's config.
    mesh: where the variables go.
    workdir: the probe's workdir, for messages.
    recorded: the metadata of the probe's newest checkpoint ({} for a new probe).

  Returns:
    The FrozenEncoder.

  Raises:
    ProbeError: the recorded step is gone, or the encoder is not the one the
      probe started on.
  """
  if not recorded:
    return program.restore(config, mesh)
  step = recorded.get("pretrained_step")
  if step is None or config.pretrained.endswith(encoder.WEIGHT_FILE_SUFFIXES):
    frozen = program.restore(config, mesh)
  else:
    directory = checkpoint.checkpoint_dir(config.pretrained)
    if os.path.isdir(directory):
      manager = checkpoint.create_manager(directory, read_only=True, async_save=False)
      try:
        steps = sorted(manager.all_steps())
      finally:
        manager.close()
      if step not in steps:
        raise ProbeError(
            f"--workdir={workdir} holds a linear probe of step {step} of pretrained="
            f"{config.pretrained}, which no longer has that checkpoint (it has {steps}); a "
            "resumed probe keeps its backbone, so probe the newest checkpoint in a fresh "
            "--workdir.")
    frozen = program.restore(config, mesh, step=step)
  expected = recorded.get("pretrained_fingerprint")
  if expected is None:
    logging.warning("--workdir=%s was written before probes recorded their encoder's "
                    "fingerprint: cannot check that %s (step %d) is still the encoder the "
                    "probe started on.", workdir, frozen.source, frozen.step)
  elif expected != frozen.fingerprint:
    raise ProbeError(
        f"--workdir={workdir} holds a linear probe of another encoder: pretrained="
        f"{config.pretrained} (step {frozen.step}) now has parameter hash "
        f"{frozen.fingerprint[:12]}, the probe started on {expected[:12]} (was the pretraining "
        "run replaced or retrained?). A resumed probe must keep its encoder: probe this one in "
        "a new --workdir, or put the original pretraining run back.")
  return frozen


def _prepare(config: ml_collections.ConfigDict, workdir: str, config_dict: Dict[str, Any]
             ) -> _Probe:
  """Options, encoder, data and schedule of a probe; reads ``workdir`` but writes nothing."""
  opts = probe_options(config)
  mesh = sharding.create_mesh()
  sharding.check_global_batch(opts.batch_size, mesh)
  workdir = workdir_lib.check_workdir(workdir)
  workdir_lib.check_resume(workdir, config_dict)
  start_step, recorded = _recorded_start(workdir)
  frozen = _restore_recorded(config, mesh, workdir, recorded)
  data = program.eval_data(config, program.resolve_image_size(config.image_size, frozen))
  sharding.check_global_batch(data.batch_size, mesh)
  info = features.check_classes(data, "the linear probe")
  duration = dict(num_examples=info.num_examples, batch_size=opts.batch_size)
  num_steps = optim.steps("num_train_steps", steps=opts.num_train_steps, epochs=opts.num_epochs,
                          **duration)
  warmup = optim.steps("optim.warmup_epochs", steps=0, epochs=opts.optim.warmup_epochs, **duration)
  peak_lr = optim.scaled_learning_rate(opts.optim.base_lr, opts.batch_size)
  schedule = optim.cosine_schedule(peak_lr, num_steps, warmup)
  tx = optim.create_optimizer(opts.optim, schedule, peak_lr, has_predictor=False)
  return _Probe(opts=opts, mesh=mesh, frozen=frozen, data=data, num_classes=info.num_classes,
                num_steps=num_steps, schedule=schedule, tx=tx, start_step=start_step)


def _train_batches(p: _Probe, embed: Callable[[jax.Array], jax.Array]) -> Iterator[Any]:
  """Host batches from step start_step + 1 on: one augmented view, or precomputed features."""
  if p.opts.augment:
    # Official protocol: RandomResizedCrop + flip, features recomputed every step.
    options = pipeline.TrainDataOptions(
        dataset=p.data.dataset, split=p.data.train_split, global_batch_size=p.opts.batch_size,
        image_size=p.data.image_size, seed=p.opts.seed, crop_scale=p.opts.crop_scale,
        skip_bad_images=p.data.skip_bad_images, num_views=1)
    bad_images = decode.BadImageLog()
    make = lambda step, checked: pipeline.create_pretrain_dataset(  # pylint: disable=g-long-lambda
        options, start_step=step, bad_images=bad_images, checked_decoding=checked)
    # Built now, before the workdir is written, so that it checks the data set; read later.
    stream = iterate.numpy_batches(make, start=p.start_step, first=make(p.start_step, False),
                                   name=f"--config.dataset={p.data.dataset}")
    return _first_views(stream)
  # Fast variant: features of the un-augmented training images, computed once.
  feats, labels = features.split_features(embed, p.mesh, p.data, "train")
  return feature_batches(feats, labels, batch_size=p.opts.batch_size, seed=p.opts.seed,
                         start_step=p.start_step)


def _first_views(stream: iterate.BatchStream) -> Iterator[Dict[str, Any]]:
  """{'image', 'label'} of each batch's single view; closing it closes ``stream``."""
  try:
    for batch in stream:
      yield {"image": batch["views"][:, 0], "label": batch["label"]}
  finally:
    stream.close()


def _results(p: _Probe, head: nn.Module, params: Any,
             embed: Callable[[jax.Array], jax.Array]) -> Dict[str, Any]:
  """Accuracy on the evaluation split and what was probed."""
  eval_feats, eval_labels = features.split_features(embed, p.mesh, p.data, "eval")
  results = probe_accuracy(head, jax.device_get(params), eval_feats, eval_labels)
  p.frozen.check_unchanged()
  return {**results, "pretrained_step": p.frozen.step, "probe_steps": p.num_steps,
          "image_size": p.data.image_size}


def run_linear_probe(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """The linear-probe program: trains, checkpoints and resumes in ``workdir``, then evaluates.

  Args:
    config: see configs/linear_probe.py.
    workdir: the probe's own directory (the pretraining workdir is only read).

  Returns:
    The results (also in workdir/results.json): probe_top1, probe_top5 (percent),
    pretrained, pretrained_step, probe_steps, image_size.

  Raises:
    stopping.Stopped: SIGTERM or Ctrl-C; the probe's checkpoint is saved (rerun
      the same command to resume).
  """
  config_dict = json.loads(config.to_json_best_effort())
  p = _prepare(config, workdir, config_dict)
  head = linear_head(p.num_classes)
  embed = encoder.make_embed_fn(p.frozen.resnet, p.mesh)
  bound_embed = functools.partial(embed, p.frozen.variables)
  batches = _train_batches(p, bound_embed)
  workdir = workdir_lib.start_run(workdir, config_dict, p.start_step)
  manager = checkpoint.create_manager(checkpoint.checkpoint_dir(workdir),
                                      keep=config.keep_checkpoints, async_save=False)
  init = lambda: jax.jit(lambda r: ProbeState.create(
      apply_fn=head.apply, params=head.init(r, jnp.zeros((1, p.frozen.feature_dim)))["params"],
      tx=p.tx), out_shardings=sharding.replicated(p.mesh))(jax.random.key(p.opts.seed))
  to_tree = lambda s: {"step": s.step, "params": s.params, "opt_state": s.opt_state}
  from_tree = lambda s, t: s.replace(step=t["step"], params=t["params"], opt_state=t["opt_state"])
  state, start_step, _ = loop.restore_or_init(manager, init, to_tree, from_tree)
  results = {}
  if start_step >= p.num_steps:  # Finished before: evaluate the restored classifier again.
    manager.close()
    results = _results(p, head, state.params, bound_embed)
  else:
    step_fn = make_probe_step(embed if p.opts.augment else None, p.mesh, p.schedule)

    def evaluate(final_state):  # Called by the loop at the last step only.
      results.update(_results(p, head, final_state.params, bound_embed))
      return results

    loop.run(lambda s, b: step_fn(s, p.frozen.variables, b), state,
             sharding.prefetch_to_mesh(batches, p.mesh, 2), start_step=start_step,
             options=loop.LoopOptions(num_steps=p.num_steps,
                                      log_every_steps=config.log_every_steps,
                                      checkpoint_every_steps=config.checkpoint_every_steps),
             manager=manager, to_tree=to_tree,
             meta={"pretrained": p.frozen.source, "pretrained_step": p.frozen.step,
                   "pretrained_fingerprint": p.frozen.fingerprint,
                   "image_size": p.data.image_size},
             writer=metric_writer.create_writer(workdir, jax.process_index() == 0),
             num_processes=jax.process_count(), evaluate=evaluate)
  if not results:
    return {}
  results["pretrained"] = p.frozen.source
  program.write_results_file(workdir, results)
  logging.info("Linear probe of %s (step %d, %d px): top-1 %.2f%%, top-5 %.2f%%.",
               p.frozen.source, p.frozen.step, p.data.image_size, results["probe_top1"],
               results["probe_top5"])
  return results
