"""The sharded MixSiam train step."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixsiam_jax import device_crops, optim, sharding, train
from tests.helpers import method, network, photometric

IMAGE = 8
BATCH = 16
PHOTOMETRIC = photometric(blur_prob=0.5)


# Every test here: ResNet-18 with one block per stage (conftest.py); the step is the same.
pytestmark = pytest.mark.usefixtures("one_block_per_stage")


def tiny_network():
  return network(depth=18, width=4, stem="cifar", projector_layers=2,
                 projector_hidden_dim=32, projector_dim=32, predictor_hidden_dim=8)


def make(mesh, lam=0.5, photometric=PHOTOMETRIC, **method_fields):
  sched = optim.cosine_schedule(0.05, 10)
  tx = optim.create_pretrain_optimizer(schedule=sched, peak_lr=0.05, weight_decay=1e-4)
  state = train.create_train_state(jax.random.key(0), tiny_network(), tx, image_size=IMAGE,
                                   mesh=mesh)
  step = train.make_train_step(sched, method(lam=lam, **method_fields), photometric)
  return state, step


def host_batch(seed=0):
  rs = np.random.RandomState(seed)
  return {"views": rs.randint(0, 256, (BATCH, 2, IMAGE, IMAGE, 3)).astype(np.uint8)}


def run(mesh, steps=2, **kwargs):
  state, step = make(mesh, **kwargs)
  jitted = train.jit_train_step(step, mesh)
  history = []
  for i in range(steps):
    state, metrics = jitted(state, sharding.global_batch(host_batch(i), mesh), jax.random.key(7))
    history.append(jax.device_get(metrics))
  return jax.device_get(state), history


@pytest.mark.slow
def test_eight_devices_equal_one_device():
  assert jax.device_count() == 8
  state8, hist8 = run(sharding.create_mesh())
  state1, hist1 = run(sharding.create_mesh(jax.devices()[:1]))
  assert int(state8.step) == int(state1.step) == 2
  # Only the order of cross-device sums differs: float32 round-off.
  for tree in ("params", "batch_stats", "opt_state"):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6),
                 getattr(state8, tree), getattr(state1, tree))
  for m8, m1 in zip(hist8, hist1):
    for key in m8:
      np.testing.assert_allclose(m8[key], m1[key], rtol=1e-4, atol=1e-6, err_msg=key)
  # The step really moved the parameters and the BN statistics.
  fresh, _ = make(sharding.create_mesh(jax.devices()[:1]))
  moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
                       state1.batch_stats, jax.device_get(fresh.batch_stats))
  assert max(jax.tree.leaves(moved)) > 1e-3


def test_metrics_are_reported_and_consistent():
  _, hist = run(sharding.create_mesh(), steps=1, lam=0.3)
  m = hist[0]
  assert set(m) == {"loss", "loss_siam", "loss_mix", "cos_pm_zf", "z_std", "lr", "grad_norm",
                    "param_norm"}
  np.testing.assert_allclose(m["loss"], 0.3 * m["loss_siam"] + 0.7 * m["loss_mix"], rtol=1e-5)
  np.testing.assert_allclose(m["cos_pm_zf"], -m["loss_mix"], rtol=1e-6)
  assert m["lr"] == pytest.approx(0.05)
  assert -1 <= m["loss_siam"] <= 1 and m["grad_norm"] > 0 and m["param_norm"] > 0
  assert 0 < m["z_std"] <= 1 / np.sqrt(32) * 1.5


def test_simsiam_skips_the_mixed_forward_pass():
  mesh = sharding.create_mesh()
  for lam, expected_views in ((1.0, 2), (0.5, 3)):
    state, step = make(mesh, lam=lam, photometric=None)
    seen = []
    apply_fn = state.apply_fn

    def spy(variables, views, **kwargs):
      seen.append(views.shape[1])
      return apply_fn(variables, views, **kwargs)

    jax.eval_shape(step, state.replace(apply_fn=spy), sharding.global_batch(host_batch(), mesh),
                   jax.random.key(0))
    assert seen == [expected_views], (lam, seen)


def test_step_is_deterministic_and_folds_the_step_into_the_rng():
  mesh = sharding.create_mesh()
  state, step = make(mesh)
  jitted = jax.jit(step)  # no donation: the same state is used twice
  batch = sharding.global_batch(host_batch(), mesh)
  a, ma = jitted(state, batch, jax.random.key(3))
  b, mb = jitted(state, batch, jax.random.key(3))
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y), (a.params, ma), (b.params, mb))
  # Same batch and key at another step: different augmentations, different loss.
  c, mc = jitted(state.replace(step=state.step + 1), batch, jax.random.key(3))
  assert float(mc["loss"]) != float(ma["loss"])


def test_state_is_donated():
  mesh = sharding.create_mesh()
  state, step = make(mesh, photometric=None)
  leaf = jax.tree.leaves(state.params)[0]
  train.jit_train_step(step, mesh)(state, sharding.global_batch(host_batch(), mesh),
                                   jax.random.key(0))
  assert leaf.is_deleted()


def test_collapse_monitor():
  d = 64
  healthy = jax.random.normal(jax.random.key(0), (4096, d))
  assert float(train._collapse_std(healthy)) == pytest.approx(1 / np.sqrt(d), rel=0.05)
  collapsed = jnp.tile(healthy[:1], (4096, 1))
  assert float(train._collapse_std(collapsed)) == pytest.approx(0.0, abs=1e-6)


def test_global_batch_must_split_over_devices():
  mesh = sharding.create_mesh()
  with pytest.raises(ValueError, match=r"batch_size=12 .* number of devices \(8\).* 16"):
    sharding.check_global_batch(12, mesh)
  assert sharding.check_global_batch(16, mesh) == 16


def test_online_probe_learns_without_touching_the_encoder():
  mesh = sharding.create_mesh()
  sched = optim.cosine_schedule(0.05, 10)
  tx = optim.create_pretrain_optimizer(schedule=sched, peak_lr=0.05, weight_decay=1e-4)
  kwargs = dict(depth=18, width=4, stem="cifar", projector_layers=2, projector_hidden_dim=32,
                projector_dim=32, predictor_hidden_dim=8)
  batch = {**host_batch(), "label": np.arange(BATCH, dtype=np.int32) % 10}
  batch["label"][0] = -1  # unlabelled examples are ignored by the probe
  after = {}
  for classes in (0, 10):
    net = network(**kwargs, num_classes=classes)
    state = train.create_train_state(jax.random.key(0), net, tx, image_size=IMAGE, mesh=mesh)
    step = train.jit_train_step(train.make_train_step(sched, method()), mesh)
    state, metrics = step(state, sharding.global_batch(batch, mesh), jax.random.key(1))
    after[classes] = (jax.device_get(state.params), jax.device_get(metrics))
  (plain, m0), (probed, m10) = after[0], after[10]
  assert "online_probe" in probed and "online_probe" not in plain
  assert m10["online_probe_loss"] > 0 and 0 <= m10["online_probe_top1"] <= 100
  np.testing.assert_allclose(m10["loss"], m0["loss"], rtol=1e-6)
  for part in ("backbone", "projector", "predictor"):
    # Same initial values (Flax derives each module's init key from its name) and the
    # same update: the probe's gradient stops at the features.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 plain[part], probed[part])


def test_abstract_state_describes_the_initialised_state_without_computing_it():
  mesh = sharding.create_mesh()
  tx = optim.create_pretrain_optimizer(schedule=optim.cosine_schedule(0.05, 10), peak_lr=0.05,
                                       weight_decay=1e-4)
  network = tiny_network()
  abstract = train.abstract_train_state(network, tx, image_size=IMAGE, mesh=mesh)
  state = train.create_train_state(jax.random.key(0), network, tx, image_size=IMAGE, mesh=mesh)
  assert jax.tree.structure(abstract) == jax.tree.structure(state)
  for a, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(state)):
    assert isinstance(a, jax.ShapeDtypeStruct)
    assert (a.shape, a.dtype) == (s.shape, s.dtype)
    assert a.sharding == s.sharding == sharding.replicated(mesh)


def test_init_compiler_options_follow_the_mesh_not_the_host():
  """The XLA:CPU-only option is for CPU meshes; a TPU mesh built on this CPU host gets none."""
  assert train.init_compiler_options(sharding.create_mesh()) == {
      "xla_backend_optimization_level": 0}
  pytest.importorskip("libtpu", reason="libtpu is not installed (requirements-tpu.txt)")
  from mixsiam_jax.planning import topologies  # pylint: disable=g-import-not-at-top
  tpu_mesh = sharding.create_mesh(topologies.devices_for("v5e:2x2").devices)
  assert train.init_compiler_options(tpu_mesh) is None


def test_step_is_traced_in_its_mesh_context():
  # The bf16 convolutions place their float32 weight-gradient sum on the context's
  # 'data' axis (models/conv.py).
  mesh = sharding.create_mesh()
  seen = []

  def step(state, batch, rng):
    seen.append(jax.sharding.get_abstract_mesh())
    return state, {"sum": jnp.sum(batch)}

  jitted = train.jit_train_step(step, mesh)
  jitted.lower(jnp.zeros(()), jnp.zeros((len(mesh.devices),)), jax.random.key(0))
  assert len(seen) == 1 and seen[0].axis_names == (sharding.DATA_AXIS,)
  assert seen[0].shape[sharding.DATA_AXIS] == len(mesh.devices)


def test_a_canvas_batch_trains_on_the_views_the_device_cuts_from_it():
  """crop_size: the step (8 devices) cuts the views from the canvases; the same step fed those
  views (cut on one device beforehand) gives the same metrics, to float32 round-off."""
  rs = np.random.RandomState(3)
  canvas = rs.randint(0, 256, (BATCH, 12, 12, 3)).astype(np.uint8)
  sizes = rs.uniform(3, 11, (BATCH, 2, 2)).astype(np.float32)
  corners = rs.uniform(0, 1, (BATCH, 2, 2)).astype(np.float32) * (11.5 - sizes)
  windows = np.concatenate([corners, sizes], axis=-1)  # fractional, inside the 12 x 12 canvas
  flip = rs.rand(BATCH, 2) < 0.5
  views = np.asarray(device_crops.crop_resize_flip(canvas, windows, flip, IMAGE)) / 255.0
  mesh = sharding.create_mesh()
  metrics = {}
  for name, batch, crop_size in (
      ("device", {"canvas": canvas, "windows": windows, "flip": flip}, IMAGE),
      ("given", {"views": views.astype(np.float32)}, None)):
    state, _ = make(mesh)
    step = train.jit_train_step(train.make_train_step(
        optim.cosine_schedule(0.05, 10), method(lam=0.5), PHOTOMETRIC, crop_size), mesh)
    _, m = step(state, sharding.global_batch(batch, mesh), jax.random.key(7))
    metrics[name] = jax.device_get(m)
  for key in ("loss", "loss_siam", "loss_mix", "grad_norm", "z_std"):
    np.testing.assert_allclose(metrics["device"][key], metrics["given"][key], rtol=1e-4,
                               atol=1e-6, err_msg=key)
