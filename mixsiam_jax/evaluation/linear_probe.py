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
import os
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax.training import train_state
from jax.sharding import Mesh

from mixsiam_jax import optim, sharding
from mixsiam_jax.checkpoints import storage
from mixsiam_jax.checkpoints.run_checkpoints import Checkpoints
from mixsiam_jax.data import decode, iterate, pipeline, tfds_prepare
from mixsiam_jax.errors import UserError
from mixsiam_jax.evaluation import encoder, evaluators, features, program
from mixsiam_jax.options.programs import ProbeOptions
from mixsiam_jax.options.shared import EncoderSource, EvalData
from mixsiam_jax.run import skeleton


class ProbeError(UserError):
  """A probe workdir that cannot be resumed as asked."""


class ProbeState(train_state.TrainState):
  """The linear classifier's parameters and optimiser state."""


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


# ----------------------------------------------------------------- the program
def _recorded_meta(workdir: skeleton.Workdir) -> Dict[str, Any]:
  """The metadata of a probe workdir's newest checkpoint ({} for a new probe)."""
  if not workdir.start_step:
    return {}
  manager = storage.create_manager(workdir.checkpoint_dir, read_only=True, async_save=False)
  try:
    return storage.read_meta(manager, workdir.start_step)
  finally:
    manager.close()


def _restore_recorded(source: EncoderSource, mesh: Mesh, workdir: str,
                      recorded: Dict[str, Any]) -> encoder.FrozenEncoder:
  """The encoder of a new probe (newest step), or of a resumed one: the one it started on.

  A resumed probe restores the pretraining step its checkpoints record and
  checks the encoder's fingerprint against the recorded one, so a pretraining
  workdir replaced by another run (same path, same steps) is refused.

  Args:
    source: the encoder the probe's options name.
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
    return program.restore(source, mesh)
  step = recorded.get("pretrained_step")
  if step is None or source.pretrained.endswith(encoder.WEIGHT_FILE_SUFFIXES):
    frozen = program.restore(source, mesh)
  else:
    directory = storage.checkpoint_dir(source.pretrained)
    if os.path.isdir(directory):
      manager = storage.create_manager(directory, read_only=True, async_save=False)
      try:
        steps = sorted(manager.all_steps())
      finally:
        manager.close()
      if step not in steps:
        raise ProbeError(
            f"--workdir={workdir} holds a linear probe of step {step} of pretrained="
            f"{source.pretrained}, which no longer has that checkpoint (it has {steps}); a "
            "resumed probe keeps its backbone, so probe the newest checkpoint in a fresh "
            "--workdir.")
    frozen = program.restore(source, mesh, step=step)
  expected = recorded.get("pretrained_fingerprint")
  if expected is None:
    logging.warning("--workdir=%s was written before probes recorded their encoder's "
                    "fingerprint: cannot check that %s (step %d) is still the encoder the "
                    "probe started on.", workdir, frozen.source, frozen.step)
  elif expected != frozen.fingerprint:
    raise ProbeError(
        f"--workdir={workdir} holds a linear probe of another encoder: pretrained="
        f"{source.pretrained} (step {frozen.step}) now has parameter hash "
        f"{frozen.fingerprint[:12]}, the probe started on {expected[:12]} (was the pretraining "
        "run replaced or retrained?). A resumed probe must keep its encoder: probe this one in "
        "a new --workdir, or put the original pretraining run back.")
  return frozen


def _train_batches(opts: ProbeOptions, data: EvalData, mesh: Mesh,
                   embed: Callable[[jax.Array], jax.Array], start_step: int) -> Iterator[Any]:
  """Host batches from step start_step + 1 on: one augmented view, or precomputed features."""
  if opts.augment:
    # Official protocol: RandomResizedCrop + flip, features recomputed every step.
    options = pipeline.TrainDataOptions(
        dataset=data.dataset, split=data.train_split, global_batch_size=opts.batch_size,
        image_size=data.image_size, seed=opts.seed, crop_scale=opts.crop_scale,
        skip_bad_images=data.skip_bad_images, num_views=1)
    bad_images = decode.BadImageLog()
    make = lambda step, checked: pipeline.create_pretrain_dataset(  # pylint: disable=g-long-lambda
        options, start_step=step, bad_images=bad_images, checked_decoding=checked)
    # Built now, before the workdir is written, so that it checks the data set; read later.
    stream = iterate.numpy_batches(make, start=start_step, first=make(start_step, False),
                                   name=f"--config.dataset={data.dataset}",
                                   remembered=bad_images.remembered)
    return _first_views(stream)
  # Fast variant: features of the un-augmented training images, computed once.
  feats, labels = features.split_features(embed, mesh, data, "train")
  return feature_batches(feats, labels, batch_size=opts.batch_size, seed=opts.seed,
                         start_step=start_step)


def _first_views(stream: iterate.BatchStream) -> Iterator[Dict[str, Any]]:
  """{'image', 'label'} of each batch's single view; closing it closes ``stream``."""
  try:
    for batch in stream:
      yield {"image": batch["views"][:, 0], "label": batch["label"]}
  finally:
    stream.close()


def _probe_state_functions(head: nn.Module, tx: optax.GradientTransformation, feature_dim: int,
                           seed: int, mesh: Mesh) -> Tuple[Callable, Callable, Callable]:
  """(init, to_tree, from_tree) of the classifier's ProbeState."""
  init = lambda: jax.jit(lambda r: ProbeState.create(  # pylint: disable=g-long-lambda
      apply_fn=head.apply, params=head.init(r, jnp.zeros((1, feature_dim)))["params"],
      tx=tx), out_shardings=sharding.replicated(mesh))(jax.random.key(seed))
  to_tree = lambda s: {"step": s.step, "params": s.params, "opt_state": s.opt_state}
  from_tree = lambda s, t: s.replace(step=t["step"], params=t["params"], opt_state=t["opt_state"])
  return init, to_tree, from_tree


def run_linear_probe(opts: ProbeOptions, workdir: str) -> Dict[str, Any]:
  """The linear-probe program: trains, checkpoints and resumes in ``workdir``, then evaluates.

  Everything (workdir, encoder, data) is checked before the workdir is written.

  Args:
    opts: from options.programs.probe_options.
    workdir: the probe's own directory (the pretraining workdir is only read).

  Returns:
    The results (also in workdir/results.json): probe_top1, probe_top5 (percent),
    pretrained, pretrained_step, probe_steps, image_size.

  Raises:
    stopping.Stopped: SIGTERM or Ctrl-C; the probe's checkpoint is saved (rerun
      the same command to resume).
  """
  mesh = sharding.create_mesh()
  sharding.check_global_batch(opts.batch_size, mesh)
  workdir = skeleton.open_workdir(workdir, opts.record)
  tfds_prepare.prepare_for_run(opts.data.data_sets())
  frozen = _restore_recorded(opts.encoder, mesh, workdir.path, _recorded_meta(workdir))
  data = dataclasses.replace(
      opts.data, image_size=program.resolve_image_size(opts.data.image_size, frozen))
  sharding.check_global_batch(data.batch_size, mesh)
  info = features.check_classes(data, "the linear probe")
  optimization = optim.create_optimization(
      opts.optim, num_train_steps=opts.num_train_steps, num_epochs=opts.num_epochs,
      num_examples=info.num_examples, batch_size=opts.batch_size, has_predictor=False)
  head = linear_head(info.num_classes)
  embed = encoder.make_embed_fn(frozen.resnet, mesh)
  bound_embed = functools.partial(embed, frozen.variables)
  # Built now, before the workdir is written, so that they check the data; a probe that
  # had finished only evaluates (the fast variant's training features are not needed).
  finished = workdir.start_step >= optimization.num_steps
  batches = None if finished else _train_batches(opts, data, mesh, bound_embed, workdir.start_step)
  init, to_tree, from_tree = _probe_state_functions(head, optimization.tx, frozen.feature_dim,
                                                    opts.seed, mesh)
  meta = {"pretrained": frozen.source, "pretrained_step": frozen.step,
          "pretrained_fingerprint": frozen.fingerprint, "image_size": data.image_size}
  step_fn = make_probe_step(embed if opts.augment else None, mesh, optimization.schedule)
  result = skeleton.train(
      workdir, Checkpoints(workdir.checkpoint_dir, opts.checkpoints, to_tree, from_tree, meta),
      init=init, step_fn=lambda s, b: step_fn(s, frozen.variables, b),
      make_batches=lambda state, writer: sharding.prefetch_to_mesh(batches, mesh, 2),
      num_steps=optimization.num_steps, cadence=opts.cadence,
      evaluate=evaluators.probe_evaluator(head, frozen, bound_embed, mesh, data),
      examples_per_step=opts.batch_size)
  results = {**result.evaluation, "pretrained": frozen.source, "pretrained_step": frozen.step,
             "probe_steps": optimization.num_steps, "image_size": data.image_size}
  program.write_results_file(workdir.path, results)
  if jax.process_index() == 0:
    logging.info("Linear probe of %s (step %d, %d px): top-1 %.2f%%, top-5 %.2f%%.",
                 frozen.source, frozen.step, data.image_size, results["probe_top1"],
                 results["probe_top5"])
  return results
