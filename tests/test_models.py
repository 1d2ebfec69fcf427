"""ResNet family, heads and per-view BatchNorm."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mixsiam_jax import models
from mixsiam_jax.models import ResNet, precision, resnet
from tests.helpers import model_options, network


def jit_init(module, shape, **kwargs):
  """Initialises under jit: eager Flax dispatches op by op and is slow on CPU."""
  return jax.jit(lambda rng: module.init(rng, jnp.zeros(shape), train=True, **kwargs))(
      jax.random.key(0))


def count_params(module, shape):
  variables = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros(shape), train=True))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize("depth,expected", [(18, 11_176_512), (50, 23_508_032)])
def test_param_counts_match_torchvision(depth, expected):
  # torchvision resnet18/resnet50 without the fc layer.
  assert count_params(ResNet(depth, 64, "imagenet"), (1, 224, 224, 3)) == expected


@pytest.mark.parametrize("depth,expected", [(34, 21_284_672), (101, 42_500_160), (152, 58_143_808)])
def test_param_counts_of_deeper_resnets_match_torchvision(depth, expected):
  assert count_params(ResNet(depth, 64, "imagenet"), (1, 64, 64, 3)) == expected


def test_cifar_stem_and_width():
  net = ResNet(18, 16, "cifar")
  variables = jit_init(net, (2, 32, 32, 3))
  assert variables["params"]["conv1"]["kernel"].shape == (3, 3, 3, 16)
  assert net.feature_dim == 128
  feats = jax.jit(lambda v, x: net.apply(v, x, train=False))(variables, jnp.ones((2, 32, 32, 3)))
  assert feats.shape == (2, 128)
  assert ResNet(50, 32, "imagenet").feature_dim == 1024
  # The ImageNet stem downsamples by 4 before layer1; the CIFAR stem does not.
  def layer1_input_shape(stem, size):
    net = ResNet(18, 8, stem)
    v = jit_init(net, (1, size, size, 3))
    _, state = jax.eval_shape(lambda v: net.apply(
        v, jnp.zeros((1, size, size, 3)), train=False, capture_intermediates=True,
        mutable=["intermediates"]), v)
    return state["intermediates"]["layer1_0"]["__call__"][0].shape
  assert layer1_input_shape("cifar", 32) == (1, 32, 32, 8)
  assert layer1_input_shape("imagenet", 64) == (1, 16, 16, 8)


def test_last_bn_of_every_block_starts_at_zero():
  params = jit_init(ResNet(50, 8, "imagenet"), (1, 32, 32, 3))["params"]
  blocks = [k for k in params if k.startswith("layer")]
  assert len(blocks) == 16
  for name in blocks:
    assert np.all(params[name]["bn3"]["scale"] == 0), name
    assert np.all(params[name]["bn1"]["scale"] == 1), name


def test_heads_shapes_and_affine_free_last_bn():
  proj = models.Projector(hidden_dim=32, out_dim=24, num_layers=3)
  v = proj.init(jax.random.key(0), jnp.zeros((4, 16)), train=True)
  assert set(v["params"]) == {"fc1", "bn1", "fc2", "bn2", "fc3"}  # bn3 has no parameters
  assert "bn3" in v["batch_stats"]
  z = proj.apply(v, jax.random.normal(jax.random.key(1), (8, 16)), train=True,
                 mutable=["batch_stats"])[0]
  # The affine-free output BN gives zero-mean, unit-variance columns.
  np.testing.assert_allclose(z.mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(z.var(0), 1, atol=1e-3)
  assert len(models.Projector(32, 24, 2).init(jax.random.key(0), jnp.zeros((4, 16)),
                                               train=True)["params"]) == 3
  pred = models.Predictor(hidden_dim=6, out_dim=24)
  pv = pred.init(jax.random.key(0), jnp.zeros((4, 24)), train=True)["params"]
  assert pv["fc1"]["kernel"].shape == (24, 6) and "bias" not in pv["fc1"]
  assert pv["fc2"]["kernel"].shape == (6, 24) and pv["fc2"]["bias"].shape == (24,)


def test_one_pass_over_views_equals_one_encoder_call_per_view():
  """What the official code does (one call per view, state threaded) equals our single pass."""
  net = network(depth=18, width=4, stem="cifar", projector_layers=2,
                projector_hidden_dim=16, projector_dim=16, predictor_hidden_dim=8)
  views = jax.random.normal(jax.random.key(0), (6, 3, 8, 8, 3))
  variables = jit_init(net, views.shape)
  apply = jax.jit(lambda v, x: net.apply(v, x, train=True, mutable=["batch_stats"]))
  joint, joint_state = apply(variables, views)
  stats = variables["batch_stats"]
  for v in range(3):
    single, new = apply({"params": variables["params"], "batch_stats": stats}, views[:, v:v + 1])
    stats = new["batch_stats"]
    for key in ("features", "z", "p"):
      np.testing.assert_allclose(joint[key][:, v], single[key][:, 0], rtol=1e-4, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               joint_state["batch_stats"], stats)


def test_bfloat16_compute_keeps_float32_params_and_outputs():
  net = network(depth=18, width=4, stem="cifar", projector_layers=2,
                projector_hidden_dim=16, projector_dim=16, predictor_hidden_dim=8,
                dtype="bfloat16")
  views = jax.random.normal(jax.random.key(0), (4, 2, 8, 8, 3))
  variables = jit_init(net, views.shape)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))
  out, _ = jax.jit(lambda v, x: net.apply(v, x, train=True, mutable=["batch_stats"]))(variables, views)
  assert out["z"].dtype == jnp.float32 and out["p"].dtype == jnp.float32


@pytest.mark.usefixtures("one_block_per_stage")
def test_remat_keeps_parameters_and_gradients_and_recomputes_every_block():
  """nn.remat on the residual blocks: same parameter tree and gradients, one barrier per block.

  One block per stage (4 blocks): half the compile of ResNet-18's 8, the same wrapping.
  """
  kwargs = dict(depth=18, width=4, stem="cifar", projector_layers=2, projector_hidden_dim=16,
                projector_dim=16, predictor_hidden_dim=8)
  plain = network(**kwargs)
  remat = network(**kwargs, remat=True)
  views = jax.random.normal(jax.random.key(0), (8, 2, 16, 16, 3))
  variables = jit_init(plain, views.shape)
  assert jax.tree.structure(jit_init(remat, views.shape)) == jax.tree.structure(variables)

  def grad_fn(net):
    def loss(params):
      out, _ = net.apply({"params": params, "batch_stats": variables["batch_stats"]}, views,
                         train=True, mutable=["batch_stats"])
      return jnp.sum(out["p"] * jax.lax.stop_gradient(out["z"][:, ::-1]))
    return jax.jit(jax.grad(loss))

  g_plain, g_remat = grad_fn(plain), grad_fn(remat)
  # Same float32 ops in another order: equal up to summation order.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               g_plain(variables["params"]), g_remat(variables["params"]))
  # jax.checkpoint marks each recomputed block with an optimisation barrier. The memory it
  # saves shows on GPU/TPU; XLA:CPU's scheduler does not reorder for memory, so a size
  # check here would not measure remat.
  count = lambda f: f.lower(variables["params"]).as_text().count("optimization_barrier")
  assert count(g_plain) == 0 and count(g_remat) == 4


@pytest.mark.parametrize("depth,stem", [(18, "cifar"), (50, "imagenet")])
def test_conv_impl_keeps_parameters_outputs_and_gradients(depth, stem, monkeypatch):
  """XLA convolutions vs per-tap matmul weight gradients: one model, two speeds.

  One block per stage (every kind of convolution, stride and shortcut of the
  family, in a quarter of the compile time).
  """
  kind, _ = resnet.RESNET_STAGES[depth]
  monkeypatch.setitem(resnet.RESNET_STAGES, depth, (kind, (1, 1, 1, 1)))
  kwargs = dict(depth=depth, width=4, stem=stem, projector_layers=2, projector_hidden_dim=16,
                projector_dim=16, predictor_hidden_dim=8)
  nets = [network(**kwargs, conv_impl=c) for c in ("xla", "matmul_weight_grad")]
  views = jax.random.normal(jax.random.key(0), (4, 2, 32, 32, 3))
  variables = jit_init(nets[0], views.shape)
  assert jax.tree.structure(jit_init(nets[1], views.shape)) == jax.tree.structure(variables)

  def loss(net, params):
    out, _ = net.apply({"params": params, "batch_stats": variables["batch_stats"]}, views,
                       train=True, mutable=["batch_stats"])
    return jnp.sum(out["p"] * jax.lax.stop_gradient(out["z"][:, ::-1]))

  (l0, g0), (l1, g1) = [jax.jit(jax.value_and_grad(lambda p, n=n: loss(n, p)))(
      variables["params"]) for n in nets]
  np.testing.assert_allclose(l0, l1, rtol=1e-6)  # Same forward ops.
  # Weight gradients summed in another order (float32): equal to rtol 1e-4, with an atol
  # of 1e-5 of each leaf's largest entry for entries that nearly cancel.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      a, b, rtol=1e-4, atol=1e-5 * float(np.abs(a).max())), g0, g1)


@pytest.mark.parametrize("platform,dtype,conv_impl", [
    ("cpu", jnp.float32, "matmul_weight_grad"), ("tpu", jnp.bfloat16, "xla"),
    ("gpu", jnp.bfloat16, "xla")])
def test_platform_of_the_mesh_decides_dtype_and_convolution(platform, dtype, conv_impl):
  """The default options leave both to the platform the network is built for."""
  backbone = models.MixSiamNetwork(model_options(), platform).bind({}).backbone
  assert (backbone.dtype, backbone.conv_impl) == (dtype, conv_impl)
  forced = model_options(half_precision=False, conv_impl="xla")
  backbone = models.MixSiamNetwork(forced, platform).bind({}).backbone
  assert (backbone.dtype, backbone.conv_impl) == (jnp.float32, "xla")


def test_every_bottleneck_convolution_uses_conv_impl():
  """ResNet-50 with per-tap weight gradients: one tap loop per convolution (not 33 of 49)."""
  kwargs = dict(depth=50, width=2, stem="imagenet", projector_layers=2, projector_hidden_dim=8,
                projector_dim=8, predictor_hidden_dim=4)
  views = jnp.zeros((2, 2, 32, 32, 3))

  def loops(conv_impl):
    net = network(**kwargs, conv_impl=conv_impl)
    variables = jax.eval_shape(lambda: net.init(jax.random.key(0), views, train=True))
    loss = lambda p, s: net.apply({"params": p, "batch_stats": s}, views, train=True,
                                  mutable=["batch_stats"])[0]["p"].sum()
    lowered = jax.jit(jax.grad(loss)).lower(variables["params"], variables["batch_stats"])
    return lowered.as_text().count("stablehlo.while")

  # Stem + 16 blocks x 3 convolutions; the four 1x1 'VALID' shortcuts stay XLA's.
  assert loops("matmul_weight_grad") == 1 + 16 * 3
  assert loops("xla") == 0


def test_dense_with_bfloat16_compute_accumulates_the_kernel_gradient_in_float32():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(64, 32)), jnp.bfloat16)
  w = jnp.asarray(rng.normal(size=(32, 16)), jnp.float32)
  y, vjp = jax.vjp(lambda a, b: precision.dense_dot_general(a, b, (((1,), (0,)), ((), ()))), x, w)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_array_equal(y, x @ w.astype(jnp.bfloat16))
  grad = jnp.asarray(rng.normal(size=y.shape), jnp.bfloat16)
  dx, dw = vjp(grad)
  assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.float32
  np.testing.assert_array_equal(dx, grad @ w.astype(jnp.bfloat16).T)
  ref = np.asarray(x, np.float64).T @ np.asarray(grad, np.float64)
  # bfloat16 output would be off by ~2e-3 relative; float32 accumulation by ~1e-6.
  np.testing.assert_allclose(dw, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


@pytest.mark.usefixtures("one_block_per_stage")
def test_bfloat16_network_gradients_are_float32_and_close_to_float32_compute():
  kwargs = dict(depth=18, width=4, stem="cifar", projector_layers=2, projector_hidden_dim=16,
                projector_dim=16, predictor_hidden_dim=8)
  views = jax.random.normal(jax.random.key(0), (8, 2, 8, 8, 3))
  nets = [network(**kwargs, dtype=d) for d in ("float32", "bfloat16")]
  variables = jit_init(nets[0], views.shape)

  def grads(net):
    def loss(params):
      out, _ = net.apply({"params": params, "batch_stats": variables["batch_stats"]}, views,
                         train=True, mutable=["batch_stats"])
      return jnp.sum(out["p"] * jax.lax.stop_gradient(out["z"][:, ::-1]))
    return jax.jit(jax.grad(loss))(variables["params"])

  g32, g16 = grads(nets[0]), grads(nets[1])
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(g16))
  # The same gradient up to bf16 activations (with 4 channels and BN over 8 examples these
  # move it by about 25%, as flax's own bf16 layers do; layer-level precision is tested
  # in test_conv.py and above).
  dot = sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(g32), jax.tree.leaves(g16)))
  assert dot / (optax.global_norm(g32) * optax.global_norm(g16)) > 0.9
