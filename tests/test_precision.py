"""Mixed precision: bfloat16 compute against float32 on a short run; colour jitter composition.

bfloat16 keeps 8 bits of mantissa (relative rounding 2^-8 = 0.4%), so the two
runs cannot agree bit for bit; what must hold is that a few steps of training
follow the same trajectory: the loss curves agree within LOSS_ATOL and the
parameters after the steps differ by a small fraction of how far the steps
moved them. Parameters, BatchNorm statistics, the loss and the optimiser state
stay float32 in both runs.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixsiam_jax import models, optim, photometric, sharding, train
from tests.helpers import method, model_options, network

IMAGE = 16
BATCH = 16
STEPS = 4
# Stated tolerances (measured on 2026-11-25, 2-core CPU: loss gap 4e-3, update cosine 0.98,
# parameter gap 0.21 of the update, update norms within 2%):
# * loss curves within 2e-2 (absolute; the loss lies in [-1, 1]);
# * the total update params_after - params_initial points the same way (cosine > 0.95) and
#   has the same length within 10%;
# * ||params_bf16 - params_f32|| below 30% of ||params_f32 - params_initial||. bfloat16
#   rounds every activation and gradient to 2^-8 relative, and in this 8-channel network with
#   16-example per-view BatchNorm that moves the parameters by about a fifth of a step's size;
#   the direction and size of the steps still agree.
LOSS_ATOL = 2e-2
UPDATE_MIN_COSINE = 0.95
UPDATE_NORM_RTOL = 0.10
PARAM_RTOL_OF_UPDATE = 0.30


def _run(dtype):
  mesh = sharding.create_mesh(jax.devices()[:1])
  net = network(depth=18, width=8, stem="cifar", projector_layers=2,
                projector_hidden_dim=64, projector_dim=64, predictor_hidden_dim=16,
                dtype=dtype)
  sched = optim.cosine_schedule(0.1, 100)
  tx = optim.create_pretrain_optimizer(schedule=sched, peak_lr=0.1, weight_decay=5e-4)
  state = train.create_train_state(jax.random.key(0), net, tx, image_size=IMAGE, mesh=mesh)
  initial = jax.device_get(state.params)
  step = train.jit_train_step(train.make_train_step(sched, method()), mesh)
  rs = np.random.RandomState(0)
  # Smooth random images (upsampled 4x4 noise) rather than white noise: closer to real inputs.
  coarse = rs.rand(BATCH, 2, 4, 4, 3)
  views = np.repeat(np.repeat(coarse, IMAGE // 4, axis=2), IMAGE // 4, axis=3)
  batch = sharding.global_batch({"views": (255 * views).astype(np.uint8)}, mesh)
  curve = []
  for _ in range(STEPS):
    state, metrics = step(state, batch, jax.random.key(1))
    curve.append(float(metrics["loss"]))
  return initial, jax.device_get(state), np.asarray(curve)


@pytest.fixture(scope="module")
def precision_runs():
  return {dtype: _run(dtype) for dtype in ("float32", "bfloat16")}


def test_bfloat16_loss_curve_matches_float32(precision_runs):
  (_, _, f32), (_, _, bf16) = precision_runs["float32"][0:3], precision_runs["bfloat16"][0:3]
  assert np.all(np.isfinite(bf16))
  np.testing.assert_allclose(bf16, f32, atol=LOSS_ATOL, err_msg=f"f32 {f32} bf16 {bf16}")
  assert f32[-1] < f32[0]  # the run really trains, so the comparison means something


def test_bfloat16_params_close_relative_to_update(precision_runs):
  initial, state32, _ = precision_runs["float32"]
  _, state16, _ = precision_runs["bfloat16"]
  flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)])
  delta32 = flat(state32.params) - flat(initial)
  delta16 = flat(state16.params) - flat(initial)
  update = np.linalg.norm(delta32)
  gap = np.linalg.norm(delta16 - delta32)
  assert update > 0
  cosine = float(delta16 @ delta32 / (np.linalg.norm(delta16) * update))
  assert cosine > UPDATE_MIN_COSINE, cosine
  assert abs(np.linalg.norm(delta16) / update - 1) < UPDATE_NORM_RTOL
  assert gap < PARAM_RTOL_OF_UPDATE * update, (gap, update)


def test_master_weights_statistics_and_optimizer_state_stay_float32(precision_runs):
  _, state16, _ = precision_runs["bfloat16"]
  for tree in (state16.params, state16.batch_stats, state16.opt_state):
    for leaf in jax.tree.leaves(tree):
      if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating):
        assert leaf.dtype == jnp.float32


def test_auto_dtype_is_float32_on_a_cpu_mesh():
  # 'auto' follows the mesh's devices (options.ModelOptions), never the host's backend.
  platform = sharding.mesh_platform(sharding.create_mesh())
  net = models.MixSiamNetwork(model_options(half_precision=None), platform)
  assert net.bind({}).backbone.dtype == jnp.float32


def _sequential_jitter(rng, img, color_jitter):
  """Reference: torchvision's ColorJitter, the four ops applied one by one in the drawn order."""
  ranges = photometric.jitter_ranges(color_jitter)
  rng_order, rng_factors = jax.random.split(rng)
  factors = jax.random.uniform(rng_factors, (4,), img.dtype, jnp.asarray([r[0] for r in ranges]),
                               jnp.asarray([r[1] for r in ranges]))
  order = np.asarray(jax.random.permutation(rng_order, 4))
  ops = (photometric.adjust_brightness, photometric.adjust_contrast, photometric.adjust_saturation,
         photometric.adjust_hue)
  for i in order:
    if color_jitter[i] > 0:
      img = ops[i](img, factors[i])
  return img


@pytest.mark.parametrize("color_jitter", [(0.4, 0.4, 0.4, 0.1), (0.4, 0.0, 0.8, 0.2),
                                          (0.4, 0.4, 0.4, 0.0)])
def test_color_jitter_equals_sequential_composition(color_jitter):
  """The fused jitter (one hue round trip) composes the ops exactly as torchvision does."""
  n = 24  # 24 = 4!: many different orders
  keys = jax.random.split(jax.random.key(5), n)
  imgs = jax.random.uniform(jax.random.key(6), (n, 6, 6, 3))
  fused = jax.jit(jax.vmap(lambda k, x: photometric.color_jitter_one(k, x, color_jitter)))(
      keys, imgs)
  orders = set()
  for k, x, y in zip(keys, imgs, np.asarray(fused)):
    orders.add(tuple(np.asarray(jax.random.permutation(jax.random.split(k)[0], 4))))
    np.testing.assert_allclose(y, _sequential_jitter(k, x, color_jitter), atol=1e-5)
  assert len(orders) > 8
