"""Weight interchange: torchvision / official SimSiam state dicts <-> our variables.

Parity tests build a reference PyTorch ResNet with torchvision's exact module
names (torchvision itself is not installed in CI) and random weights, random BN
affine parameters and random running statistics, and compare features with our
model on the same input, in inference (running statistics) and training (batch
statistics) mode. Tolerance: max |ours - torch| <= 1e-4 x max |torch|, with
torch run in float64 as the ground truth: training-mode BN over tiny batches is
ill-conditioned enough in float32 that torch's own float32 result is ~5e-5 off
(ResNet-50, width 8, batch 6 at 64x64), and ours is as close to float64 as torch's.
"""
import copy
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixsiam_jax import weights
from mixsiam_jax.models import MixSiamNetwork, ResNet
from tests import entry_points
from tests.helpers import model_options

torch = pytest.importorskip(
    "torch", reason="PyTorch is not installed: parity tests need it (CI installs the CPU build; "
    "pip install torch to run them here).")
nn = torch.nn


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
  """Tiny models: one thread avoids contention with XLA's CPU thread pools (10x faster here)."""
  previous = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(previous)


RTOL_OF_SCALE = 1e-4  # max abs difference allowed, relative to the largest |torch| value.


# ----------------------------------------------------------------------------- reference model


def _conv3x3(inp, out, stride=1):
  return nn.Conv2d(inp, out, 3, stride, 1, bias=False)


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = _conv3x3(inplanes, planes, stride)
    self.bn1 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU(inplace=True)
    self.conv2 = _conv3x3(planes, planes)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample

  def forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return self.relu(out + identity)


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = _conv3x3(planes, planes, stride)  # torchvision v1.5: stride on the 3x3.
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample

  def forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return self.relu(out + identity)


STAGES = {18: (BasicBlock, (2, 2, 2, 2)), 50: (Bottleneck, (3, 4, 6, 3))}


class TorchResNet(nn.Module):
  """torchvision.models.ResNet's structure and names, plus a width knob and a CIFAR stem."""

  def __init__(self, depth, width=64, stem="imagenet", num_classes=10):
    super().__init__()
    block, layers = STAGES[depth]
    self.inplanes = width
    if stem == "imagenet":
      self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
      self.maxpool = nn.MaxPool2d(3, 2, 1)
    else:
      self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
      self.maxpool = nn.Identity()
    self.bn1 = nn.BatchNorm2d(width)
    self.relu = nn.ReLU(inplace=True)
    for i, n in enumerate(layers):
      setattr(self, f"layer{i + 1}", self._make_layer(block, width * 2**i, n, 1 if i == 0 else 2))
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Linear(width * 8 * block.expansion, num_classes)

  def _make_layer(self, block, planes, blocks, stride):
    downsample = None
    if stride != 1 or self.inplanes != planes * block.expansion:
      downsample = nn.Sequential(
          nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
          nn.BatchNorm2d(planes * block.expansion))
    mods = [block(self.inplanes, planes, stride, downsample)]
    self.inplanes = planes * block.expansion
    mods += [block(self.inplanes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*mods)

  def features(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return torch.flatten(self.avgpool(x), 1)

  def forward(self, x):
    return self.fc(self.features(x))


class TorchSimSiam(nn.Module):
  """facebookresearch/simsiam's SimSiam (builder.py), with a projector-depth knob."""

  def __init__(self, depth, width, stem, dim, pred_dim, projector_layers=3):
    super().__init__()
    self.encoder = TorchResNet(depth, width, stem, num_classes=dim)
    prev_dim = self.encoder.fc.weight.shape[1]
    mods = []
    for _ in range(projector_layers - 1):
      mods += [nn.Linear(prev_dim, prev_dim, bias=False), nn.BatchNorm1d(prev_dim),
               nn.ReLU(inplace=True)]
    mods += [self.encoder.fc, nn.BatchNorm1d(dim, affine=False)]
    self.encoder.fc = nn.Sequential(*mods)
    self.encoder.fc[-2].bias.requires_grad = False
    self.predictor = nn.Sequential(nn.Linear(dim, pred_dim, bias=False), nn.BatchNorm1d(pred_dim),
                                   nn.ReLU(inplace=True), nn.Linear(pred_dim, dim))

  def forward(self, x):
    feats = self.encoder.features(x)
    z = self.encoder.fc(feats)
    return feats, z, self.predictor(z)


def randomize(module, seed=0):
  """Random weights, BN affine parameters and running statistics (none trivial)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, (nn.Conv2d, nn.Linear)):
        fan_in = m.weight[0].numel()
        m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
        if m.bias is not None:
          m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.5)
      elif isinstance(m, nn.modules.batchnorm._BatchNorm):
        c = m.num_features
        if m.affine:
          m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
          m.bias.copy_(torch.randn(c, generator=gen) * 0.2)
        m.running_mean.copy_(torch.randn(c, generator=gen) * 0.2)
        m.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.5)
        m.num_batches_tracked.fill_(7)
  return module


def numpy_state_dict(module):
  return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def assert_close(ours, ref, name):
  ours, ref = np.asarray(ours), np.asarray(ref)
  assert ours.shape == ref.shape, name
  scale = max(float(np.abs(ref).max()), 1e-6)
  diff = float(np.abs(ours - ref).max())
  assert diff <= RTOL_OF_SCALE * scale, f"{name}: max abs diff {diff:.3g}, scale {scale:.3g}"
  return diff / scale


def nchw(x):
  """NHWC float32 NumPy -> NCHW float64 torch (the float64 reference's input)."""
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).double()


def float64_copy(module):
  return copy.deepcopy(module).double()


# ----------------------------------------------------------------------------- parity


BACKBONE_CASES = [  # depth, width, stem, image size
    (18, 16, "imagenet", 64),
    (18, 8, "cifar", 32),
    (50, 8, "imagenet", 64),
]


@pytest.mark.parametrize("depth,width,stem,size", BACKBONE_CASES)
def test_torchvision_backbone_parity_in_both_bn_modes(depth, width, stem, size):
  ref = randomize(TorchResNet(depth, width, stem), seed=depth)
  sd = numpy_state_dict(ref)
  params, stats = weights.import_torch_state_dict(sd, depth=depth, width=width, stem=stem)
  net = ResNet(depth, width, stem)
  x = np.random.default_rng(0).normal(size=(8, size, size, 3)).astype(np.float32)

  @jax.jit
  def ours(params, stats, x):
    variables = {"params": params["backbone"], "batch_stats": stats["backbone"]}
    eval_feats = net.apply(variables, x, train=False)
    train_feats, new_stats = net.apply(variables, x, train=True, mutable=["batch_stats"])
    return eval_feats, train_feats, new_stats["batch_stats"]

  eval_ours, train_ours, new_stats = ours(params, stats, jnp.asarray(x))
  ref = float64_copy(ref)
  with torch.no_grad():
    eval_ref = ref.eval().features(nchw(x)).numpy()
    train_ref = ref.train().features(nchw(x)).numpy()  # Also updates the running stats.
  rel = [assert_close(eval_ours, eval_ref, "eval features"),
         assert_close(train_ours, train_ref, "train features")]
  # One training step updates the running statistics the same way (momentum, unbiased var).
  exported = weights.export_torch_state_dict({"backbone": params["backbone"]},
                                             {"backbone": new_stats})
  updated = numpy_state_dict(ref)
  for key in exported:
    if key.endswith(("running_mean", "running_var")):
      rel.append(assert_close(exported[key], updated[key], key))
  print(f"ResNet-{depth} w{width} {stem}: max rel diff {max(rel):.2e}")


def test_simsiam_checkpoint_parity_with_heads():
  depth, width, stem, dim, pred_dim = 18, 16, "imagenet", 64, 16
  ref = randomize(TorchSimSiam(depth, width, stem, dim, pred_dim), seed=3)
  sd = {"module." + k: v for k, v in numpy_state_dict(ref).items()}  # DDP-wrapped, as published.
  params, stats = weights.import_torch_state_dict(sd, depth=depth, width=width, stem=stem)
  net = MixSiamNetwork(model_options(depth=depth, width=width, stem=stem, projector_layers=3,
                                    projector_hidden_dim=width * 8, projector_dim=dim,
                                    predictor_hidden_dim=pred_dim, conv_impl="xla"), "cpu")
  x = np.random.default_rng(1).normal(size=(8, 64, 64, 3)).astype(np.float32)

  @jax.jit
  def ours(params, stats, x):
    variables = {"params": params, "batch_stats": stats}
    views = x[:, None]  # One view: BN statistics over the whole batch, like one torch call.
    eval_out = net.apply(variables, views, train=False)
    train_out, _ = net.apply(variables, views, train=True, mutable=["batch_stats"])
    return eval_out, train_out

  eval_ours, train_ours = ours(params, stats, jnp.asarray(x))
  ref = float64_copy(ref)
  with torch.no_grad():
    eval_ref = ref.eval()(nchw(x))
    train_ref = ref.train()(nchw(x))
  for mode, o, r in (("eval", eval_ours, eval_ref), ("train", train_ours, train_ref)):
    for name, ref_value in zip(("features", "z", "p"), r):
      assert_close(o[name][:, 0], ref_value.numpy(), f"{mode} {name}")


def test_simsiam_export_loads_strictly_into_the_official_model():
  depth, width, stem, dim, pred_dim = 18, 8, "cifar", 32, 8
  ref = randomize(TorchSimSiam(depth, width, stem, dim, pred_dim, projector_layers=2), seed=4)
  sd = {"module." + k: v for k, v in numpy_state_dict(ref).items()}
  params, stats = weights.import_torch_state_dict(sd, depth=depth, width=width, stem=stem)
  exported = weights.export_torch_state_dict(params, stats)
  assert set(exported) == set(sd)
  target = TorchSimSiam(depth, width, stem, dim, pred_dim, projector_layers=2)
  wrapped = nn.Module()
  wrapped.module = target
  wrapped.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in exported.items()},
                          strict=True)
  x = nchw(np.random.default_rng(2).normal(size=(4, 32, 32, 3)).astype(np.float32)).float()
  with torch.no_grad():
    for mode in ("eval", "train"):
      # The exported projector bias is zero (folded into the BN mean): same outputs.
      a, b = getattr(ref, mode)()(x), getattr(target, mode)()(x)
      for name, u, v in zip(("features", "z", "p"), a, b):
        assert_close(v.numpy(), u.numpy(), f"{mode} {name}")


# ----------------------------------------------------------------------------- round trip


def _random_variables(net, shape, seed=0):
  """Variables of ``net`` with every leaf random (no compilation: shapes via eval_shape)."""
  abstract = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros(shape), train=True))
  rng = np.random.default_rng(seed)
  leaves, treedef = jax.tree.flatten(abstract)
  filled = [rng.normal(size=x.shape).astype(np.float32) for x in leaves]
  return jax.tree.unflatten(treedef, filled)


@pytest.mark.parametrize("depth,stem,layers", [(50, "imagenet", 3), (18, "cifar", 2),
                                               (34, "imagenet", 3), (101, "imagenet", 2)])
def test_round_trip_is_exact_with_heads(depth, stem, layers):
  width = 16 if depth == 50 else 8
  net = MixSiamNetwork(model_options(depth=depth, width=width, stem=stem, projector_layers=layers,
                                    projector_hidden_dim=64, projector_dim=32,
                                    predictor_hidden_dim=16, conv_impl="xla"), "cpu")
  variables = _random_variables(net, (2, 1, 32, 32, 3))
  sd = weights.export_torch_state_dict(variables["params"], variables["batch_stats"])
  assert all(k.startswith(("module.encoder.", "module.predictor.")) for k in sd)
  params, stats = weights.import_torch_state_dict(sd, depth=depth, width=width, stem=stem)
  chex_equal = lambda a, b: jax.tree.map(np.testing.assert_array_equal, a, b)
  assert jax.tree.structure(params) == jax.tree.structure(variables["params"])
  assert jax.tree.structure(stats) == jax.tree.structure(variables["batch_stats"])
  chex_equal(params, variables["params"])
  chex_equal(stats, variables["batch_stats"])


def test_backbone_round_trip_and_torchvision_keys_match_our_param_tree():
  net = ResNet(50, 64, "imagenet")
  variables = _random_variables(net, (1, 32, 32, 3), seed=1)
  sd = weights.export_torch_state_dict(variables["params"], variables["batch_stats"])
  # The standard ResNet-50 has torchvision's keys and shapes (fc aside).
  assert sd["conv1.weight"].shape == (64, 3, 7, 7)
  assert sd["layer4.2.conv3.weight"].shape == (2048, 512, 1, 1)
  assert sd["layer3.0.downsample.1.running_var"].shape == (1024,)
  assert sum(v.size for k, v in sd.items()
             if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
             ) == 23_508_032
  sd["fc.weight"] = np.zeros((1000, 2048), np.float32)  # torchvision's classifier: dropped.
  sd["fc.bias"] = np.zeros((1000,), np.float32)
  params, stats = weights.import_torch_state_dict(sd, depth=50)
  jax.tree.map(np.testing.assert_array_equal, params["backbone"], variables["params"])
  jax.tree.map(np.testing.assert_array_equal, stats["backbone"], variables["batch_stats"])


def test_npz_and_pth_files(tmp_path):
  ref = randomize(TorchSimSiam(18, 8, "cifar", 16, 8, projector_layers=2), seed=5)
  sd = numpy_state_dict(ref)
  npz = str(tmp_path / "w.npz")
  weights.save_npz(npz, sd)
  loaded = weights.load_state_dict_file(npz)
  assert set(loaded) == set(sd)
  for k in sd:
    np.testing.assert_array_equal(loaded[k], sd[k])
  # The official SimSiam checkpoint format: {'epoch', 'arch', 'state_dict', 'optimizer'}.
  pth = str(tmp_path / "checkpoint_0099.pth.tar")
  torch.save({"epoch": 100, "arch": "resnet18",
              "state_dict": {"module." + k: v for k, v in ref.state_dict().items()}}, pth)
  from_pth = weights.load_state_dict_file(pth)
  a = weights.import_torch_state_dict(from_pth, depth=18, width=8, stem="cifar")
  b = weights.import_torch_state_dict(loaded, depth=18, width=8, stem="cifar")
  jax.tree.map(np.testing.assert_array_equal, a, b)
  # torch tensors (with requires_grad) are accepted directly, too.
  c = weights.import_torch_state_dict(dict(ref.named_parameters(), **dict(ref.named_buffers())),
                                      depth=18, width=8, stem="cifar")
  jax.tree.map(np.testing.assert_array_equal, c, b)
  # Backbone only, from the same checkpoint.
  params, stats = weights.import_torch_state_dict(from_pth, depth=18, width=8, stem="cifar",
                                                  include_heads=False)
  assert set(params) == {"backbone"} and set(stats) == {"backbone"}


def test_moco_and_prefix_layouts():
  ref = randomize(TorchResNet(18, 8, "cifar"), seed=6)
  sd = numpy_state_dict(ref)
  moco = {f"module.encoder_q.{k}": v for k, v in sd.items()}
  moco.update({f"module.encoder_k.{k}": v for k, v in sd.items()})
  moco["module.queue"] = np.zeros((128, 16), np.float32)
  moco["module.queue_ptr"] = np.zeros((1,), np.int64)
  expected = weights.import_torch_state_dict(sd, depth=18, width=8, stem="cifar")
  got = weights.import_torch_state_dict(moco, depth=18, width=8, stem="cifar")
  jax.tree.map(np.testing.assert_array_equal, got, expected)
  nested = {f"backbone.{k}": v for k, v in sd.items()}
  nested["head.weight"] = np.zeros((3, 3), np.float32)  # Outside the prefix: ignored.
  got = weights.import_torch_state_dict(nested, depth=18, width=8, stem="cifar",
                                        prefix="backbone.")
  jax.tree.map(np.testing.assert_array_equal, got, expected)


# ----------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def r18_state_dict():
  return numpy_state_dict(randomize(TorchResNet(18, 8, "cifar"), seed=7))


def test_missing_key_is_named(r18_state_dict):
  sd = dict(r18_state_dict)
  del sd["layer2.0.downsample.1.running_var"]
  with pytest.raises(ValueError, match=r"missing keys: 'layer2\.0\.downsample\.1\.running_var'"):
    weights.import_torch_state_dict(sd, depth=18, width=8, stem="cifar")


def test_unexpected_key_is_named(r18_state_dict):
  sd = dict(r18_state_dict, **{"layer5.0.conv1.weight": np.zeros((1,), np.float32)})
  with pytest.raises(ValueError, match=r"unexpected keys: 'layer5\.0\.conv1\.weight'"):
    weights.import_torch_state_dict(sd, depth=18, width=8, stem="cifar")


def test_wrong_shape_names_key_and_both_shapes(r18_state_dict):
  sd = dict(r18_state_dict)
  sd["layer1.1.conv2.weight"] = np.zeros((8, 8, 5, 5), np.float32)
  with pytest.raises(ValueError, match=r"'layer1\.1\.conv2\.weight': expected shape "
                     r"\(8, 8, 3, 3\), found \(8, 8, 5, 5\)"):
    weights.import_torch_state_dict(sd, depth=18, width=8, stem="cifar")


def test_wrong_architecture_and_options(r18_state_dict):
  with pytest.raises(ValueError, match="ResNet-50"):  # Wrong depth: many keys at once.
    weights.import_torch_state_dict(r18_state_dict, depth=50, width=8, stem="cifar")
  with pytest.raises(ValueError, match=r"'conv1\.weight': expected shape \(8, 3, 7, 7\)"):
    weights.import_torch_state_dict(r18_state_dict, depth=18, width=8, stem="imagenet")
  with pytest.raises(ValueError, match="prefix='nope.'"):
    weights.import_torch_state_dict(r18_state_dict, depth=18, width=8, stem="cifar",
                                    prefix="nope.")
  with pytest.raises(ValueError, match="model.depth=19"):
    weights.import_torch_state_dict(r18_state_dict, depth=19)
  simsiam = {"module." + k: v for k, v in numpy_state_dict(
      TorchSimSiam(18, 8, "cifar", 16, 8, projector_layers=2)).items()}
  with pytest.raises(ValueError, match="projector_layers=3"):
    weights.import_torch_state_dict(simsiam, depth=18, width=8, stem="cifar", projector_layers=3)


@pytest.fixture
def without_torch(monkeypatch):
  """Calling it makes ``import torch`` fail for the rest of the test."""
  import builtins
  real_import = builtins.__import__

  def no_torch(name, *args, **kwargs):
    if name == "torch":
      raise ImportError("No module named 'torch'")
    return real_import(name, *args, **kwargs)

  return lambda: monkeypatch.setattr(builtins, "__import__", no_torch)


def test_file_errors(tmp_path, without_torch):
  with pytest.raises(FileNotFoundError, match="nothere.pth"):
    weights.load_state_dict_file(str(tmp_path / "nothere.pth"))
  bad = tmp_path / "w.bin"
  bad.write_bytes(b"x")
  with pytest.raises(ValueError, match=r"w\.bin.*\.npz"):
    weights.load_state_dict_file(str(bad))
  pth = tmp_path / "w.pth"
  pth.write_bytes(b"x")
  without_torch()
  with pytest.raises(ImportError, match="pip install torch.*npz"):
    weights.load_state_dict_file(str(pth))


def test_package_does_not_import_torch():
  import subprocess
  import sys
  code = ("import sys, mixsiam_jax.weights, mixsiam_jax.models; "
          "sys.exit(1 if 'torch' in sys.modules else 0)")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0


def test_export_to_a_missing_folder_or_to_pth_without_torch_is_one_clear_error(tmp_path,
                                                                                without_torch):
  missing = tmp_path / "no" / "such"
  # Checked before the (here nonexistent) workdir is read.
  with pytest.raises(weights.WeightsError, match=f"folder {missing} does not exist"):
    weights.export_workdir(str(tmp_path / "run"), str(missing / "w.npz"))
  with pytest.raises(weights.WeightsError, match=r"--out=.*w\.bin must end in \.npz or \.pth"):
    weights.export_workdir(str(tmp_path / "run"), str(tmp_path / "w.bin"))
  without_torch()
  with pytest.raises(weights.TorchMissingError,
                     match=r"Writing .*w\.pth needs PyTorch.*pip install torch.*\.npz"):
    weights.export_workdir(str(tmp_path / "run"), str(tmp_path / "w.pth"))


def test_command_line_errors_are_one_line(tmp_path):
  missing = tmp_path / "no" / "such"
  for args, message in (
      ([f"--workdir={tmp_path}", f"--out={missing}/w.npz"], f"folder {missing} does not exist"),
      ([f"--workdir={tmp_path}/run", f"--out={tmp_path}/w.npz"], "run does not exist"),
      # Read after JAX's backend has started (where libtpu is installed, its TPU search).
      ([f"--workdir={tmp_path}", f"--out={tmp_path}/w.npz"],
       f"--workdir={tmp_path} holds no checkpoints/")):
    result = entry_points.run("-m", "mixsiam_jax.weights", "export", *args)
    assert result.returncode == 1
    assert message in entry_points.one_error_line(result)


def test_unreadable_files_are_one_clear_error(tmp_path):
  np.save(tmp_path / "single.npy", np.zeros(3))
  np.savez(tmp_path / "objects.npz", a=np.array([{"x": 1}], dtype=object))
  cases = {
      "garbage.npz": (np.random.default_rng(0).bytes(3000), "not a zip archive"),
      "cut.npz": (b"PK\x03\x04cut short", "File is not a zip file"),
      "single.npz": ((tmp_path / "single.npy").read_bytes(), "a single .npy array"),
      "objects.npz": ((tmp_path / "objects.npz").read_bytes(), "Object arrays cannot be loaded"),
  }
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
    cases["garbage.pth"] = (np.random.default_rng(1).bytes(3000), "")
  except ImportError:
    pass
  for name, (content, reason) in cases.items():
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(weights.WeightsError) as err:
      weights.load_state_dict_file(str(path))
    message = str(err.value)
    assert message.startswith(f"{path} is not a readable state-dict file ("), message
    assert reason in message and "\n" not in message and len(message) < 500, message
