"""Training state and the pure MixSiam train step.

The step is one pure function ``(state, batch, rng) -> (state, metrics)``; it is
jitted with explicit shardings over a 1-D data mesh (parameters replicated,
batch sharded) and donates the old state. Randomness comes from
``fold_in(rng, state.step)``, so a step's augmentations depend only on the seed
and the step number.
"""
from typing import Any, Callable, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state
from jax.sharding import Mesh

from mixsiam_jax import augment, device_crops, losses, sharding
from mixsiam_jax.options.training import MethodOptions, PhotometricOptions
from mixsiam_jax.photometric import device_photometric_augment

Batch = Dict[str, jax.Array]
Metrics = Dict[str, jax.Array]


class TrainState(train_state.TrainState):
  """Flax TrainState plus the BatchNorm running statistics."""
  batch_stats: Any = None


def _init_fn(network: nn.Module, tx: optax.GradientTransformation, image_size: int
             ) -> Callable[[jax.Array], TrainState]:
  """``init(rng) -> TrainState``: parameters, BN statistics and optimiser state at step 0."""
  def init(rng):
    dummy = jnp.zeros((1, 2, image_size, image_size, 3), jnp.float32)
    variables = network.init(rng, dummy, train=True)
    return TrainState.create(apply_fn=network.apply, params=variables["params"], tx=tx,
                             batch_stats=variables["batch_stats"])
  return init


def abstract_train_state(network: nn.Module, tx: optax.GradientTransformation, *,
                         image_size: int, mesh: Mesh) -> TrainState:
  """The train state's shapes, dtypes and shardings, without computing or compiling anything.

  What compiling the step for another machine's devices, restoring a checkpoint
  onto a mesh, or planning a run needs; works for meshes of devices this host
  does not have.

  Args:
    network: the MixSiamNetwork.
    tx: the optimiser.
    image_size: side of the square input images.
    mesh: the data-parallel mesh (the state is replicated on it).

  Returns:
    A TrainState whose leaves are jax.ShapeDtypeStruct with NamedShardings.
  """
  shapes = jax.eval_shape(lambda: _init_fn(network, tx, image_size)(jax.random.key(0)))
  rep = sharding.replicated(mesh)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), shapes)


def create_train_state(rng: jax.Array, network: nn.Module, tx: optax.GradientTransformation, *,
                       image_size: int, mesh: Mesh) -> TrainState:
  """Initialises parameters, BN statistics and optimiser state, replicated on ``mesh``.

  Initialisation runs under jit with the shardings of ``abstract_train_state``,
  so it also works when the mesh spans several processes.

  Args:
    rng: PRNG key for the parameters.
    network: the MixSiamNetwork.
    tx: the optimiser.
    image_size: side of the square input images.
    mesh: the data-parallel mesh.

  Returns:
    A TrainState at step 0.
  """
  abstract = abstract_train_state(network, tx, image_size=image_size, mesh=mesh)
  lowered = jax.jit(_init_fn(network, tx, image_size),
                    out_shardings=jax.tree.map(lambda x: x.sharding, abstract)).lower(rng)
  return lowered.compile(compiler_options=init_compiler_options(mesh))(rng)


def init_compiler_options(mesh: Mesh) -> Optional[Dict[str, Any]]:
  """XLA options for compiling the initialisation on ``mesh`` (None: the defaults).

  Initialisation runs once; on CPU, XLA's optimiser spends tens of seconds on the
  dozens of unrolled random-number kernels for nothing, so it is skipped there.
  The option exists only for XLA:CPU, so it follows the mesh's devices, never the
  host's backend (a TPU mesh built on a CPU host gets the defaults).
  """
  if sharding.mesh_platform(mesh) == "cpu":
    return {"xla_backend_optimization_level": 0}
  return None


def _collapse_std(z: jax.Array) -> jax.Array:
  """Std over the batch of the l2-normalised z, averaged over channels (SimSiam Fig. 2).

  About 1/sqrt(D) for well-spread outputs, 0 for a collapsed encoder.
  """
  return jnp.mean(jnp.std(losses.l2_normalize(z), axis=0))


def _probe_loss(logits: jax.Array, labels: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """Cross-entropy and top-1 (percent) of the online probe; labels < 0 (unlabelled) are ignored."""
  valid = labels >= 0
  safe = jnp.where(valid, labels, 0)
  count = jnp.maximum(valid.sum(), 1)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
  hits = (jnp.argmax(logits, -1) == safe) & valid
  return jnp.sum(jnp.where(valid, ce, 0.0)) / count, 100.0 * hits.sum() / count


def step_keys(rng: jax.Array, step: jax.Array) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """The keys of one step: (photometric, mixing, aggregation target).

  Args:
    rng: the run's base key.
    step: the step number (the state's step before the update).

  Returns:
    Three keys split from fold_in(rng, step), so a step's randomness depends
    only on the seed and the step number.
  """
  rng_photo, rng_mix, rng_target = jax.random.split(jax.random.fold_in(rng, step), 3)
  return rng_photo, rng_mix, rng_target


def make_view_fn(method: MethodOptions, photometric: Optional[PhotometricOptions] = None,
                 crop_size: Optional[int] = None
                 ) -> Callable[[Batch, jax.Array, jax.Array], jax.Array]:
  """Builds the on-device view preparation shared by the train step and previews.

  Args:
    method: the method options (lam, mixing).
    photometric: colour jitter, grayscale and blur to run on the device; None if
      the host did them.
    crop_size: None: batch['views'] holds the host's views; else the side of the
      views the device cuts from batch['canvas'] with batch['windows'] and
      batch['flip'] (device_crops.py; batch_format.py's canvas form).

  Returns:
    ``views(batch, rng, step) -> [B, V, H, W, 3]`` normalised float32 views:
    (x1, x2) when lam == 1, else (x1, x2, x_m). ``rng`` is the run's base key.
  """
  def views_fn(batch: Batch, rng: jax.Array, step: jax.Array) -> jax.Array:
    rng_photo, rng_mix, _ = step_keys(rng, step)
    if crop_size is None:
      raw = batch["views"]
    else:
      raw = device_crops.crop_resize_flip(batch["canvas"], batch["windows"], batch["flip"],
                                          crop_size) / 255.0
    batch_size = raw.shape[0]
    flat = raw.reshape((batch_size * 2,) + raw.shape[2:])
    if photometric is not None:
      images = device_photometric_augment(rng_photo, flat, photometric)
    elif raw.dtype == jnp.uint8:
      images = flat.astype(jnp.float32) / 255.0
    else:
      images = flat.astype(jnp.float32)
    views = augment.normalize(images).reshape(raw.shape)
    if method.lam == 1.0:  # SimSiam: no third view, no third forward pass.
      return views
    x1, x2 = views[:, 0], views[:, 1]
    if method.mixture:
      x_m = augment.mix_views(rng_mix, x1, x2, mode=method.mix_mode,
                              mix_lambda=method.mix_lambda, alpha=method.mix_alpha,
                              prob=method.mix_prob)
    else:
      x_m = augment.choose_views(rng_mix, x1, x2)
    return jnp.concatenate([views, x_m[:, None]], axis=1)

  return views_fn


def make_train_step(schedule: optax.Schedule, method: MethodOptions,
                    photometric: Optional[PhotometricOptions] = None,
                    crop_size: Optional[int] = None
                    ) -> Callable[[TrainState, Batch, jax.Array], Tuple[TrainState, Metrics]]:
  """Builds the pure MixSiam train step.

  Args:
    schedule: the encoder's learning-rate schedule (reported as 'lr').
    method: the method options (lam, aggregation, mixing).
    photometric: colour jitter, grayscale and blur to run on the device; None if
      the host did them.
    crop_size: None, or the side of the views the step cuts from canvases (make_view_fn).

  Returns:
    ``step(state, batch, rng) -> (state, metrics)`` where batch['views'] is
    [B, 2, H, W, 3] (uint8 in [0, 255] or float in [0, 1]), or with crop_size
    batch['canvas'], ['windows'] and ['flip'], and rng is the run's base key.
  """
  views_fn = make_view_fn(method, photometric, crop_size)

  def step(state: TrainState, batch: Batch, rng: jax.Array) -> Tuple[TrainState, Metrics]:
    views = views_fn(batch, rng, state.step)
    rng_target = step_keys(rng, state.step)[2]

    def loss_fn(params):
      out, updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, views,
                                    train=True, mutable=["batch_stats"])
      loss, aux = losses.mixsiam_loss(out["p"], out["z"], lam=method.lam,
                                      aggregation=method.aggregation, rng=rng_target)
      aux = {"loss": loss, **aux}
      if "probe_logits" in out:
        # The probe sees stop-gradient features: adding its loss leaves the encoder's gradient as is.
        probe_loss, probe_top1 = _probe_loss(out["probe_logits"], batch["label"])
        loss = loss + probe_loss
        aux.update(online_probe_loss=probe_loss, online_probe_top1=probe_top1)
      return loss, (aux, updates["batch_stats"], out["z"])

    (_, (aux, batch_stats, z)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    metrics = {
        **aux,
        "z_std": _collapse_std(z[:, 0]),
        "lr": schedule(state.step),
        "grad_norm": optax.global_norm(grads),
        "param_norm": optax.global_norm(new_state.params),
    }
    return new_state, metrics

  return step


def jit_train_step(step: Callable, mesh: Mesh) -> Callable:
  """Jits ``step`` with explicit shardings on ``mesh`` and donates the incoming state.

  Args:
    step: a function from make_train_step.
    mesh: the data-parallel mesh.

  Returns:
    The compiled step; its batch must be sharded on the batch axis (see
    sharding.global_batch), its state and rng replicated. It is traced with
    ``mesh`` as the context's mesh, where the bfloat16 convolutions place their
    float32 cross-device weight-gradient sum (models/conv.py).
  """
  rep, data = sharding.replicated(mesh), sharding.batch_sharded(mesh)

  def step_in_mesh(state, batch, rng):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return step(state, batch, rng)

  return jax.jit(step_in_mesh, in_shardings=(rep, data, rep), out_shardings=(rep, rep),
                 donate_argnums=(0,))
