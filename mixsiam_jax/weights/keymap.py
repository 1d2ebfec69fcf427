"""The torch key of every tensor of our modules, derived from their own parameter paths.

``jax.eval_shape`` of a module's init gives each variable's path and shape
without computing anything; a name map turns each Flax module and leaf name into
torchvision's / the official SimSiam code's. Nothing here restates the ResNet's
structure: a change to the model changes the map with it.
"""
import dataclasses
import re
from typing import Any, Callable, List, Mapping, Tuple

import jax
import jax.numpy as jnp

from mixsiam_jax.models.heads import Predictor, Projector
from mixsiam_jax.models.resnet import ResNet

# Flax -> torch module names. Names not matched are the same on both sides (conv1, bn2, ...).
BACKBONE_MODULES = ((re.compile(r"^layer(\d+)_(\d+)$"), r"layer\1.\2"),
                    (re.compile(r"^downsample_conv$"), "downsample.0"),
                    (re.compile(r"^downsample_bn$"), "downsample.1"))
# The official predictor nn.Sequential: Linear, BN, ReLU, Linear.
PREDICTOR_MODULES = {"fc1": "0", "bn1": "1", "fc2": "3"}
# (collection, Flax leaf) -> torch tensor name.
LEAVES = {("params", "kernel"): "weight", ("params", "scale"): "weight",
          ("params", "bias"): "bias", ("batch_stats", "mean"): "running_mean",
          ("batch_stats", "var"): "running_var"}


@dataclasses.dataclass(frozen=True)
class Entry:
  """One tensor: its torch key and shape, and where it lives in our variables.

  Attributes:
    torch_key: the state-dict key.
    path: ('params' | 'batch_stats', part, module, ..., leaf); part is
      'backbone', 'projector' or 'predictor'.
    torch_shape: the tensor's shape in torch's layout.
    kind: 'conv' (OIHW <-> HWIO), 'linear' ([out, in] <-> [in, out]) or 'copy'.
  """
  torch_key: str
  path: Tuple[str, ...]
  torch_shape: Tuple[int, ...]
  kind: str = "copy"


def backbone_module(name: str) -> str:
  """torchvision's name of a ResNet submodule ('layer1_0' -> 'layer1.0', 'downsample_bn' -> ...)."""
  for pattern, torch_name in BACKBONE_MODULES:
    if pattern.match(name):
      return pattern.sub(torch_name, name)
  return name


def projector_module(name: str) -> str:
  """The official projector's index: fc{i} -> 3(i - 1), bn{i} -> 3(i - 1) + 1 (Linear, BN, ReLU)."""
  index = 3 * (int(name[2:]) - 1)
  return str(index if name.startswith("fc") else index + 1)


def _leaves(tree: Mapping[str, Any], prefix: Tuple[str, ...] = ()):
  """(path, leaf) of a nested mapping in insertion (= module creation) order."""
  for name, value in tree.items():
    if isinstance(value, Mapping):
      yield from _leaves(value, prefix + (name,))
    else:
      yield prefix + (name,), value


def _torch_layout(kind: str, shape: Tuple[int, ...]) -> Tuple[int, ...]:
  if kind == "conv":  # HWIO -> OIHW
    return (shape[3], shape[2], shape[0], shape[1])
  return (shape[1], shape[0]) if kind == "linear" else shape


def module_entries(module: Any, input_shape: Tuple[int, ...], part: str, tprefix: str,
                   rename: Callable[[str], str]) -> List[Entry]:
  """An Entry for every variable of ``module`` (params, then batch_stats, in creation order).

  Args:
    module: a Flax module called as ``module(x, train)``.
    input_shape: shape of an input ``x`` (any batch size; only shapes are traced).
    part: the name of the module in our network's variables ('backbone', ...).
    tprefix: prefix of its torch keys (e.g. 'module.encoder.').
    rename: Flax submodule name -> torch submodule name.

  Returns:
    The entries; the torch key is tprefix + renamed module path + leaf name.
  """
  abstract = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros(input_shape),
                                                train=False))
  entries = []
  for collection in ("params", "batch_stats"):
    for (*modules, leaf), value in _leaves(abstract.get(collection, {})):
      shape = tuple(value.shape)
      kind = {4: "conv", 2: "linear"}.get(len(shape), "copy") if leaf == "kernel" else "copy"
      key = tprefix + ".".join([rename(m) for m in modules] + [LEAVES[(collection, leaf)]])
      entries.append(Entry(key, (collection, part, *modules, leaf), _torch_layout(kind, shape),
                           kind))
  return entries


def backbone_entries(depth: int, width: int, stem: str, tprefix: str) -> List[Entry]:
  """Every tensor of a ResNet backbone in torchvision's layout (without fc)."""
  return module_entries(ResNet(depth, width, stem), (1, 32, 32, 3), "backbone", tprefix,
                        backbone_module)


def projector_entries(num_layers: int, in_dim: int, hidden_dim: int, out_dim: int,
                      tprefix: str) -> List[Entry]:
  """The official SimSiam projector (its last Linear's bias is not ours: see weights/__init__)."""
  return module_entries(Projector(hidden_dim, out_dim, num_layers), (1, in_dim), "projector",
                        tprefix, projector_module)


def predictor_entries(dim: int, hidden_dim: int, tprefix: str) -> List[Entry]:
  """The official SimSiam predictor: 0 Linear (no bias), 1 BN, 3 Linear (bias)."""
  return module_entries(Predictor(hidden_dim, dim), (1, dim), "predictor", tprefix,
                        PREDICTOR_MODULES.__getitem__)
