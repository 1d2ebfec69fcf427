"""Our variables <-> PyTorch state dicts (torchvision, official SimSiam, MoCo layouts).

See the package docstring (mixsiam_jax/weights/__init__.py) for the layouts and
the one deliberate difference (the projector's last bias).
"""
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from mixsiam_jax.errors import UserError
from mixsiam_jax.models.resnet import RESNET_STAGES, ResNet
from mixsiam_jax.options.training import check_backbone
from mixsiam_jax.weights import keymap

NUM_BATCHES = "num_batches_tracked"
_MAX_LISTED = 12  # offending keys listed in an error message before summarising


class WeightsError(UserError):
  """A state dict, weight file or export target that cannot be used as asked."""


def to_numpy(value: Any) -> np.ndarray:
  """A NumPy copy of an array or a (CPU or not, grad or not, bf16 or not) torch tensor."""
  if hasattr(value, "detach"):  # torch.Tensor, without importing torch.
    value = value.detach().cpu()
    if str(value.dtype) in ("torch.bfloat16", "torch.float16"):
      value = value.float()
    return value.numpy()
  return np.asarray(value)


def _detect_layout(keys: Sequence[str]) -> str:
  """'simsiam', 'moco' or 'torchvision' from the (prefix-stripped) key names."""
  if any(k.startswith("encoder.") for k in keys):
    return "simsiam"
  if any(k.startswith("encoder_q.") for k in keys):
    return "moco"
  return "torchvision"


def _select_prefix(state_dict: Mapping[str, Any], prefix: str) -> Dict[str, Any]:
  """Keeps the keys under ``prefix`` (stripped), then strips a DDP 'module.' if all have it."""
  selected = dict(state_dict)
  if prefix:
    selected = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not selected:
      raise WeightsError(f"No key of the state dict starts with prefix={prefix!r} (first keys: "
                         f"{sorted(state_dict)[:5]}); pass the prefix its keys actually have.")
  if selected and all(k.startswith("module.") for k in selected):
    selected = {k[len("module."):]: v for k, v in selected.items()}
  return selected


def _is_dropped(key: str, layout: str) -> bool:
  """Keys that are known and deliberately not imported."""
  if key.endswith("." + NUM_BATCHES):
    return True
  if layout == "torchvision":
    return key in ("fc.weight", "fc.bias")
  if layout == "moco":
    return key.startswith(("encoder_q.fc.", "encoder_k.")) or key in ("queue", "queue_ptr")
  return False


def _count_projector_layers(keys: Iterable[str], tprefix: str) -> int:
  """Number of Linear layers in the official projector (indices 0, 3, 6, ... with a weight)."""
  heads = {k[len(tprefix):].split(".")[0] for k in keys
           if k.startswith(tprefix) and k.endswith(".weight")}
  return sum(1 for h in heads if h.isdigit() and int(h) % 3 == 0)


def _infer_dim(sd: Mapping[str, np.ndarray], key: str, axis: int, what: str) -> int:
  if key not in sd:
    raise WeightsError(f"State dict lacks {key!r}, needed to infer the {what}; "
                       "check the prefix and layout of the checkpoint.")
  return int(sd[key].shape[axis])


def _head_entries(sd: Mapping[str, np.ndarray], feature_dim: int,
                  projector_layers: Optional[int]) -> Tuple[List[keymap.Entry], int]:
  """Projector and predictor entries of a SimSiam-layout state dict, and the projector depth."""
  found = _count_projector_layers(sd, "encoder.fc.")
  if projector_layers is None:
    projector_layers = found
  elif found and found != projector_layers:
    raise WeightsError(f"projector_layers={projector_layers} but the checkpoint's projector "
                       f"'encoder.fc.*' has {found} Linear layers; pass projector_layers={found} "
                       "or None to infer it.")
  if projector_layers < 1:
    raise WeightsError("SimSiam layout without projector weights 'encoder.fc.0.weight'; the "
                       "checkpoint is not a SimSiam encoder (or pass prefix='...encoder.').")
  last = 3 * (projector_layers - 1)
  out_dim = _infer_dim(sd, f"encoder.fc.{last}.weight", 0, "projector output dim")
  hidden_dim = (_infer_dim(sd, "encoder.fc.0.weight", 0, "projector hidden dim")
                if projector_layers > 1 else out_dim)
  entries = keymap.projector_entries(projector_layers, feature_dim, hidden_dim, out_dim,
                                     "encoder.fc.")
  if any(k.startswith("predictor.") for k in sd):
    pred_hidden = _infer_dim(sd, "predictor.0.weight", 0, "predictor hidden dim")
    entries += keymap.predictor_entries(out_dim, pred_hidden, "predictor.")
  return entries, projector_layers


def _format_keys(keys: Sequence[str]) -> str:
  keys = sorted(keys)
  more = f" and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
  return ", ".join(repr(k) for k in keys[:_MAX_LISTED]) + more


def _check_keys(sd: Mapping[str, np.ndarray], entries: Sequence[keymap.Entry],
                optional: Iterable[str], layout: str, description: str) -> None:
  """Raises one WeightsError listing every missing, unexpected and wrongly shaped key."""
  expected = {e.torch_key: e for e in entries}
  optional = set(optional)
  missing = [k for k in expected if k not in sd]
  unexpected = [k for k in sd
                if k not in expected and k not in optional and not _is_dropped(k, layout)]
  wrong = [f"{k!r}: expected shape {e.torch_shape}, found {tuple(sd[k].shape)}"
           for k, e in expected.items() if k in sd and tuple(sd[k].shape) != e.torch_shape]
  problems = []
  if missing:
    problems.append(f"missing keys: {_format_keys(missing)}")
  if unexpected:
    problems.append(f"unexpected keys: {_format_keys(unexpected)}")
  if wrong:
    more = f" and {len(wrong) - _MAX_LISTED} more" if len(wrong) > _MAX_LISTED else ""
    problems.append("wrong shapes: " + "; ".join(wrong[:_MAX_LISTED]) + more)
  if problems:
    raise WeightsError(f"State dict ({layout} layout) does not match {description}: "
                       + " | ".join(problems)
                       + ". Check depth, width, stem, prefix and projector_layers.")


def _convert(value: Any, kind: str, to_torch: bool) -> np.ndarray:
  """A float32 copy in the other framework's layout."""
  value = np.asarray(value, np.float32)
  if kind == "conv":
    return np.ascontiguousarray(value.transpose((3, 2, 0, 1) if to_torch else (2, 3, 1, 0)))
  return np.ascontiguousarray(value.T) if kind == "linear" else value.copy()


def import_torch_state_dict(state_dict: Mapping[str, Any], *, depth: int, width: int = 64,
                            stem: str = "imagenet", prefix: str = "",
                            projector_layers: Optional[int] = None,
                            include_heads: bool = True
                            ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """Converts a PyTorch state dict to our variable trees.

  Args:
    state_dict: key -> array (NumPy arrays or torch tensors); torchvision ResNet,
      official SimSiam or MoCo layout (see the module docstring), optionally
      wrapped in DistributedDataParallel ('module.').
    depth: ResNet depth (18, 34, 50, 101, 152).
    width: channels of the first stage (64 = standard).
    stem: 'imagenet' (7x7/2 conv + max-pool) or 'cifar' (3x3/1 conv).
    prefix: only keys starting with it are read, with it stripped (e.g.
      'backbone.'); other keys are ignored. Empty: every key must be understood.
    projector_layers: SimSiam layout only; None infers it from the keys, a
      number is checked against them.
    include_heads: False ignores the SimSiam projector and predictor keys and
      returns the backbone only.

  Returns:
    (params, batch_stats): float32 NumPy trees {'backbone': ...} plus, for a
    SimSiam checkpoint with include_heads, 'projector' and (when present)
    'predictor', laid out as MixSiamNetwork's variables.

  Raises:
    WeightsError: listing every missing or unexpected key and every wrong shape
      (expected vs found), or naming the option that does not fit.
  """
  check_backbone(depth, width, stem, "model")
  sd = {k: to_numpy(v) for k, v in _select_prefix(state_dict, prefix).items()}
  layout = _detect_layout(list(sd))
  bprefix = {"simsiam": "encoder.", "moco": "encoder_q.", "torchvision": ""}[layout]
  entries = keymap.backbone_entries(depth, width, stem, bprefix)
  folded_bias, description = None, f"ResNet-{depth} (width {width}, stem {stem!r})"
  if layout == "simsiam" and include_heads:
    head_entries, num_layers = _head_entries(sd, ResNet(depth, width).feature_dim,
                                             projector_layers)
    entries += head_entries
    folded_bias = f"encoder.fc.{3 * (num_layers - 1)}.bias"
    description += " with SimSiam projector/predictor"
  elif layout == "simsiam":
    sd = {k: v for k, v in sd.items() if not k.startswith(("encoder.fc.", "predictor."))}
  _check_keys(sd, entries, [folded_bias] if folded_bias else [], layout, description)

  trees: Dict[str, Any] = {"params": {}, "batch_stats": {}}
  for e in entries:
    node = trees
    for name in e.path[:-1]:
      node = node.setdefault(name, {})
    node[e.path[-1]] = _convert(sd[e.torch_key], e.kind, to_torch=False)
  if folded_bias in sd:
    bias = np.asarray(sd[folded_bias], np.float32)
    bn = trees["batch_stats"]["projector"][f"bn{num_layers}"]
    if bias.shape != bn["mean"].shape:
      raise WeightsError(f"{folded_bias!r}: expected shape {bn['mean'].shape}, "
                         f"found {bias.shape}.")
    # The affine-free BN after this Linear subtracts its running mean; folding the
    # bias there keeps inference outputs unchanged (training ones never depend on it).
    bn["mean"] = bn["mean"] - bias
  return trees["params"], trees["batch_stats"]


def _as_dict(tree: Any) -> Any:
  """A plain nested dict from a dict or flax FrozenDict."""
  return {k: _as_dict(v) for k, v in tree.items()} if isinstance(tree, Mapping) else tree


def _infer_architecture(backbone: Mapping[str, Any]) -> Tuple[int, int, str]:
  """(depth, width, stem) of a backbone params tree."""
  if "kernel" not in backbone.get("conv1", {}):
    raise WeightsError(f"Not a ResNet backbone params tree: top-level keys {sorted(backbone)}; "
                       "pass params['backbone'] (or the whole {'backbone', ...} tree).")
  kernel_shape = np.shape(backbone["conv1"]["kernel"])
  stem = {7: "imagenet", 3: "cifar"}.get(int(kernel_shape[0]))
  if stem is None:
    raise WeightsError(f"backbone conv1 kernel {kernel_shape} is neither 7x7 (imagenet stem) "
                       "nor 3x3 (cifar stem).")
  blocks = tuple(sum(1 for k in backbone if k.startswith(f"layer{s}_")) for s in range(1, 5))
  kind = "bottleneck" if "conv3" in backbone.get("layer1_0", {}) else "basic"
  for depth, spec in RESNET_STAGES.items():
    if spec == (kind, blocks):
      return depth, int(kernel_shape[-1]), stem
  raise WeightsError(f"Backbone with {kind} blocks {blocks} per stage is no ResNet of depths "
                     f"{sorted(RESNET_STAGES)}.")


def _get(tree: Mapping[str, Any], path: Sequence[str]) -> Any:
  node = tree
  for i, name in enumerate(path):
    if not isinstance(node, Mapping) or name not in node:
      raise WeightsError(f"Variables lack {'/'.join(path[:i + 1])!r} (needed for {path[-1]!r} "
                         f"of {'/'.join(path[1:-1])}); the params and batch_stats trees do not "
                         "match.")
    node = node[name]
  return node


def export_torch_state_dict(params: Mapping[str, Any], batch_stats: Mapping[str, Any], *,
                            include_heads: bool = True) -> Dict[str, np.ndarray]:
  """Converts our variables to a PyTorch state dict (NumPy arrays).

  Args:
    params: {'backbone': ..., ['projector': ..., 'predictor': ...]} or a bare
      backbone params tree. Architecture (depth, width, stem, head sizes) is
      read from the shapes.
    batch_stats: the matching batch_stats tree.
    include_heads: with heads present, write the official SimSiam layout
      ('module.encoder.*' with the projector as 'module.encoder.fc.*',
      'module.predictor.*'), loadable with strict=True into the official
      SimSiam model; otherwise (or without heads) plain torchvision backbone
      keys without 'fc.*' (load with strict=False into a torchvision ResNet).

  Returns:
    key -> float32 array in torch layouts (num_batches_tracked: int64 zeros).

  Raises:
    WeightsError: naming the missing variable or the unrecognised architecture.
  """
  params, batch_stats = _as_dict(params), _as_dict(batch_stats)
  if "backbone" not in params:
    params, batch_stats = {"backbone": params}, {"backbone": batch_stats}
  depth, width, stem = _infer_architecture(params["backbone"])
  heads = include_heads and "projector" in params
  entries = keymap.backbone_entries(depth, width, stem, "module.encoder." if heads else "")
  if heads:
    num_layers = sum(1 for k in params["projector"] if k.startswith("fc"))
    out_dim = int(np.shape(_get(params, ("projector", f"fc{num_layers}", "kernel")))[1])
    hidden = int(np.shape(_get(params, ("projector", "fc1", "kernel")))[1])
    entries += keymap.projector_entries(num_layers, ResNet(depth, width).feature_dim, hidden,
                                        out_dim, "module.encoder.fc.")
    if "predictor" in params:
      pred_hidden = int(np.shape(_get(params, ("predictor", "fc1", "kernel")))[1])
      entries += keymap.predictor_entries(out_dim, pred_hidden, "module.predictor.")
  trees = {"params": params, "batch_stats": batch_stats}
  out: Dict[str, np.ndarray] = {}
  for e in entries:
    out[e.torch_key] = _convert(_get(trees, e.path), e.kind, to_torch=True)
    if e.torch_key.endswith(".running_var"):
      out[e.torch_key[:-len("running_var")] + NUM_BATCHES] = np.zeros((), np.int64)
  if heads:
    # The official last projector Linear has a frozen bias; ours is folded into
    # the running mean of the BN after it (see the module docstring).
    out[f"module.encoder.fc.{3 * (num_layers - 1)}.bias"] = np.zeros((out_dim,), np.float32)
  return out


