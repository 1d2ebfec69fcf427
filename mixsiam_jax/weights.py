"""Weight interchange with PyTorch: torchvision ResNets and official SimSiam checkpoints.

Three state-dict layouts are understood (keys after an optional ``prefix`` and an
optional DistributedDataParallel ``module.`` are stripped):

- torchvision ResNet: ``conv1.weight``, ``bn1.*``, ``layer1.0.conv1.weight``,
  ``layer1.0.downsample.0.weight`` (conv), ``layer1.0.downsample.1.*`` (BN), ...
  The classifier ``fc.weight``/``fc.bias`` is dropped (we have no classifier).
- official SimSiam (facebookresearch/simsiam): ``encoder.*`` is a torchvision
  ResNet whose ``fc`` is the projector ``nn.Sequential`` (Linear at 3i, BN at
  3i + 1, ReLU at 3i + 2; the last BN is affine-free), ``predictor.0`` Linear
  (no bias), ``predictor.1`` BN, ``predictor.3`` Linear (with bias).
- MoCo (v1/v2): ``encoder_q.*`` is taken as the backbone; its ``fc`` head,
  ``encoder_k.*`` and the queue are dropped (their MLP has biases and no BN, so
  it does not fit our projector).

Layouts: conv kernels OIHW (torch) <-> HWIO (Flax); Linear weights [out, in] <->
Dense kernels [in, out]; BN weight/bias <-> scale/bias (params) and
running_mean/running_var <-> mean/var (batch_stats; both sides store the
unbiased running variance). ``num_batches_tracked`` is accepted and ignored on
import, and written as 0 on export (torch only reads it when momentum=None).

The official projector's last Linear has a (frozen) bias; ours has none because
the affine-free BN after it removes any constant. In training mode that is
exact; in inference mode the BN subtracts its running mean, so on import the
bias is folded into that running mean (mean - bias) and on export the bias is
written as zeros. Both modes therefore give the same outputs, and
import(export(x)) == x exactly.

torch is never imported at module level: it is only needed to read ``.pth`` files.
"""
import dataclasses
import os
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from mixsiam_jax.models.resnet import RESNET_STAGES, check_resnet_options

# Keys accepted in every BN and ignored on import.
_NUM_BATCHES = "num_batches_tracked"
# How many offending keys an error message lists before summarising.
_MAX_LISTED = 12


@dataclasses.dataclass(frozen=True)
class _Entry:
  """One tensor: its torch key and shape, and where it lives in our variables.

  path: ('params' | 'batch_stats', module, ..., leaf).
  kind: 'conv' (OIHW <-> HWIO), 'linear' ([out, in] <-> [in, out]) or 'copy'.
  """
  torch_key: str
  path: Tuple[str, ...]
  torch_shape: Tuple[int, ...]
  kind: str = "copy"


def _conv(tkey: str, path: Tuple[str, ...], out_ch: int, in_ch: int, k: int) -> List[_Entry]:
  return [_Entry(f"{tkey}.weight", ("params",) + path + ("kernel",), (out_ch, in_ch, k, k), "conv")]


def _linear(tkey: str, path: Tuple[str, ...], out_dim: int, in_dim: int,
            bias: bool) -> List[_Entry]:
  entries = [_Entry(f"{tkey}.weight", ("params",) + path + ("kernel",), (out_dim, in_dim),
                    "linear")]
  if bias:
    entries.append(_Entry(f"{tkey}.bias", ("params",) + path + ("bias",), (out_dim,)))
  return entries


def _bn(tkey: str, path: Tuple[str, ...], channels: int, affine: bool = True) -> List[_Entry]:
  entries = []
  if affine:
    entries += [_Entry(f"{tkey}.weight", ("params",) + path + ("scale",), (channels,)),
                _Entry(f"{tkey}.bias", ("params",) + path + ("bias",), (channels,))]
  entries += [_Entry(f"{tkey}.running_mean", ("batch_stats",) + path + ("mean",), (channels,)),
              _Entry(f"{tkey}.running_var", ("batch_stats",) + path + ("var",), (channels,))]
  return entries


def backbone_feature_dim(depth: int, width: int) -> int:
  """Length of the pooled feature vector of ResNet-``depth`` with first-stage ``width``."""
  kind, _ = RESNET_STAGES[depth]
  return width * 8 * (4 if kind == "bottleneck" else 1)


def _backbone_entries(depth: int, width: int, stem: str, tprefix: str) -> List[_Entry]:
  """Every tensor of a torchvision-layout ResNet (without fc), in module order."""
  kind, stages = RESNET_STAGES[depth]
  expansion = 4 if kind == "bottleneck" else 1
  root = ("backbone",)
  entries = _conv(f"{tprefix}conv1", root + ("conv1",), width, 3, 7 if stem == "imagenet" else 3)
  entries += _bn(f"{tprefix}bn1", root + ("bn1",), width)
  in_ch = width
  for stage, num_blocks in enumerate(stages):
    planes = width * 2**stage
    for block in range(num_blocks):
      stride = 2 if stage > 0 and block == 0 else 1
      tk = f"{tprefix}layer{stage + 1}.{block}"
      path = root + (f"layer{stage + 1}_{block}",)
      if kind == "basic":
        convs = [(planes, in_ch, 3), (planes, planes, 3)]
      else:
        convs = [(planes, in_ch, 1), (planes, planes, 3), (planes * 4, planes, 1)]
      for i, (o, n, k) in enumerate(convs, start=1):
        entries += _conv(f"{tk}.conv{i}", path + (f"conv{i}",), o, n, k)
        entries += _bn(f"{tk}.bn{i}", path + (f"bn{i}",), o)
      out_ch = planes * expansion
      if stride != 1 or in_ch != out_ch:  # Same rule as torchvision and our _shortcut.
        entries += _conv(f"{tk}.downsample.0", path + ("downsample_conv",), out_ch, in_ch, 1)
        entries += _bn(f"{tk}.downsample.1", path + ("downsample_bn",), out_ch)
      in_ch = out_ch
  return entries


def _projector_entries(num_layers: int, in_dim: int, hidden_dim: int, out_dim: int,
                       tprefix: str) -> List[_Entry]:
  """Official SimSiam projector: Linear at index 3i, BN at 3i + 1 (the last BN affine-free).

  The last Linear's bias is handled separately (folded into the BN, see module doc).
  """
  entries = []
  for i in range(num_layers):
    last = i == num_layers - 1
    n_in = in_dim if i == 0 else hidden_dim
    n_out = out_dim if last else hidden_dim
    entries += _linear(f"{tprefix}{3 * i}", ("projector", f"fc{i + 1}"), n_out, n_in, bias=False)
    entries += _bn(f"{tprefix}{3 * i + 1}", ("projector", f"bn{i + 1}"), n_out, affine=not last)
  return entries


def _predictor_entries(dim: int, hidden_dim: int, tprefix: str) -> List[_Entry]:
  """Official SimSiam predictor: 0 Linear (no bias), 1 BN, 2 ReLU, 3 Linear (bias)."""
  return (_linear(f"{tprefix}0", ("predictor", "fc1"), hidden_dim, dim, bias=False)
          + _bn(f"{tprefix}1", ("predictor", "bn1"), hidden_dim)
          + _linear(f"{tprefix}3", ("predictor", "fc2"), dim, hidden_dim, bias=True))


# ----------------------------------------------------------------------------- import


def _to_numpy(value: Any) -> np.ndarray:
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
  if prefix:
    selected = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not selected:
      sample = sorted(state_dict)[:5]
      raise ValueError(f"No key of the state dict starts with prefix={prefix!r} "
                       f"(first keys: {sample}); pass the prefix its keys actually have.")
  else:
    selected = dict(state_dict)
  if selected and all(k.startswith("module.") for k in selected):
    selected = {k[len("module."):]: v for k, v in selected.items()}
  return selected


def _is_dropped(key: str, layout: str) -> bool:
  """Keys that are known and deliberately not imported."""
  if key.endswith("." + _NUM_BATCHES):
    return True
  if layout == "torchvision":
    return key in ("fc.weight", "fc.bias")
  if layout == "moco":
    return (key.startswith("encoder_q.fc.") or key.startswith("encoder_k.")
            or key in ("queue", "queue_ptr"))
  return False


def _count_projector_layers(keys: Iterable[str], tprefix: str) -> int:
  """Number of Linear layers in the official projector (indices 0, 3, 6, ... with a weight)."""
  indices = set()
  for key in keys:
    if key.startswith(tprefix):
      head = key[len(tprefix):].split(".")[0]
      if head.isdigit() and int(head) % 3 == 0 and key.endswith(".weight"):
        indices.add(int(head))
  return len(indices)


def _infer_dim(sd: Mapping[str, np.ndarray], key: str, axis: int, what: str) -> int:
  if key not in sd:
    raise ValueError(f"State dict lacks {key!r}, needed to infer the {what}; "
                     f"check the prefix and layout of the checkpoint.")
  return int(sd[key].shape[axis])


def _head_entries(sd: Mapping[str, np.ndarray], feature_dim: int,
                  projector_layers: Optional[int]) -> Tuple[List[_Entry], int]:
  """Projector and predictor entries of a SimSiam-layout state dict, and the projector depth.

  Widths are read from the tensors; their consistency is checked with the rest.
  """
  found = _count_projector_layers(sd, "encoder.fc.")
  if projector_layers is None:
    projector_layers = found
  elif found and found != projector_layers:
    raise ValueError(f"projector_layers={projector_layers} but the checkpoint's projector "
                     f"'encoder.fc.*' has {found} Linear layers; pass projector_layers={found} "
                     "or None to infer it.")
  if projector_layers < 1:
    raise ValueError("SimSiam layout without projector weights 'encoder.fc.0.weight'; "
                     "the checkpoint is not a SimSiam encoder (or pass prefix='...encoder.').")
  last = 3 * (projector_layers - 1)
  out_dim = _infer_dim(sd, f"encoder.fc.{last}.weight", 0, "projector output dim")
  hidden_dim = (_infer_dim(sd, "encoder.fc.0.weight", 0, "projector hidden dim")
                if projector_layers > 1 else out_dim)
  entries = _projector_entries(projector_layers, feature_dim, hidden_dim, out_dim, "encoder.fc.")
  if any(k.startswith("predictor.") for k in sd):
    pred_hidden = _infer_dim(sd, "predictor.0.weight", 0, "predictor hidden dim")
    entries += _predictor_entries(out_dim, pred_hidden, "predictor.")
  return entries, projector_layers


def _format_keys(keys: Sequence[str]) -> str:
  keys = sorted(keys)
  listed = ", ".join(repr(k) for k in keys[:_MAX_LISTED])
  more = f" and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
  return listed + more


def _check_keys(sd: Mapping[str, np.ndarray], entries: Sequence[_Entry], optional: Iterable[str],
                layout: str, description: str) -> None:
  """Raises one ValueError listing every missing, unexpected and wrongly shaped key."""
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
    problems.append("wrong shapes: " + "; ".join(wrong[:_MAX_LISTED])
                    + (f" and {len(wrong) - _MAX_LISTED} more" if len(wrong) > _MAX_LISTED else ""))
  if problems:
    raise ValueError(f"State dict ({layout} layout) does not match {description}: "
                     + " | ".join(problems)
                     + ". Check depth, width, stem, prefix and projector_layers.")


def _set(tree: Dict[str, Any], path: Sequence[str], value: np.ndarray) -> None:
  for name in path[:-1]:
    tree = tree.setdefault(name, {})
  tree[path[-1]] = value


def _to_flax(value: np.ndarray, kind: str) -> np.ndarray:
  value = np.asarray(value, np.float32)
  if kind == "conv":
    return np.ascontiguousarray(value.transpose(2, 3, 1, 0))
  if kind == "linear":
    return np.ascontiguousarray(value.T)
  return value.copy()


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
      'backbone.' for a checkpoint holding more than the network); other keys
      are ignored. Empty: every key must be understood.
    projector_layers: SimSiam layout only; None infers it from the keys, a
      number is checked against them.
    include_heads: False ignores the SimSiam projector and predictor keys and
      returns the backbone only.

  Returns:
    (params, batch_stats): float32 NumPy trees {'backbone': ...} plus, for a
    SimSiam checkpoint with include_heads, 'projector' and (when present)
    'predictor', laid out as MixSiamNetwork's variables.

  Raises:
    ValueError: listing every missing or unexpected key and every wrong shape
      (expected vs found), or naming the option that does not fit.
  """
  check_resnet_options(depth, width, stem)
  sd = {k: _to_numpy(v) for k, v in _select_prefix(state_dict, prefix).items()}
  layout = _detect_layout(list(sd))
  bprefix = {"simsiam": "encoder.", "moco": "encoder_q.", "torchvision": ""}[layout]
  entries = _backbone_entries(depth, width, stem, bprefix)
  optional: List[str] = []
  folded_bias = None
  description = f"ResNet-{depth} (width {width}, stem {stem!r})"
  if layout == "simsiam":
    if include_heads:
      head_entries, num_layers = _head_entries(sd, backbone_feature_dim(depth, width),
                                               projector_layers)
      entries += head_entries
      folded_bias = f"encoder.fc.{3 * (num_layers - 1)}.bias"
      optional.append(folded_bias)
      description += " with SimSiam projector/predictor"
    else:
      sd = {k: v for k, v in sd.items()
            if not (k.startswith("encoder.fc.") or k.startswith("predictor."))}
  _check_keys(sd, entries, optional, layout, description)

  trees: Dict[str, Any] = {"params": {}, "batch_stats": {}}
  for e in entries:
    _set(trees, e.path, _to_flax(sd[e.torch_key], e.kind))
  if folded_bias is not None and folded_bias in sd:
    bias = np.asarray(sd[folded_bias], np.float32)
    bn = trees["batch_stats"]["projector"]
    last_bn = f"bn{num_layers}"
    if bias.shape != bn[last_bn]["mean"].shape:
      raise ValueError(f"{folded_bias!r}: expected shape {bn[last_bn]['mean'].shape}, "
                       f"found {bias.shape}.")
    # The affine-free BN after this Linear subtracts its running mean; folding the
    # bias there keeps inference outputs unchanged (training ones never depend on it).
    bn[last_bn]["mean"] = bn[last_bn]["mean"] - bias
  return trees["params"], trees["batch_stats"]


# ----------------------------------------------------------------------------- export


def _as_dict(tree: Any) -> Dict[str, Any]:
  """A plain nested dict from a dict or flax FrozenDict."""
  if isinstance(tree, Mapping):
    return {k: _as_dict(v) for k, v in tree.items()}
  return tree


def _infer_architecture(backbone: Mapping[str, Any]) -> Tuple[int, int, str]:
  """(depth, width, stem) of a backbone params tree."""
  if "conv1" not in backbone or "kernel" not in backbone["conv1"]:
    raise ValueError(f"Not a ResNet backbone params tree: top-level keys {sorted(backbone)}; "
                     "pass params['backbone'] (or the whole {'backbone', ...} tree).")
  kernel_shape = np.shape(backbone["conv1"]["kernel"])
  width = int(kernel_shape[-1])
  stem = {7: "imagenet", 3: "cifar"}.get(int(kernel_shape[0]))
  if stem is None:
    raise ValueError(f"backbone conv1 kernel {kernel_shape} is neither 7x7 (imagenet stem) "
                     "nor 3x3 (cifar stem).")
  blocks = tuple(sum(1 for k in backbone if k.startswith(f"layer{s}_")) for s in range(1, 5))
  kind = "bottleneck" if "conv3" in backbone.get("layer1_0", {}) else "basic"
  for depth, spec in RESNET_STAGES.items():
    if spec == (kind, blocks):
      return depth, width, stem
  raise ValueError(f"Backbone with {kind} blocks {blocks} per stage is no ResNet of depths "
                   f"{sorted(RESNET_STAGES)}.")


def _get(tree: Mapping[str, Any], path: Sequence[str]) -> Any:
  node = tree
  for i, name in enumerate(path):
    if not isinstance(node, Mapping) or name not in node:
      raise ValueError(f"Variables lack {'/'.join(path[:i + 1])!r} (needed for {path[-1]!r} of "
                       f"{'/'.join(path[1:-1])}); the params and batch_stats trees do not match.")
    node = node[name]
  return node


def _to_torch_layout(value: Any, kind: str) -> np.ndarray:
  value = np.asarray(value, np.float32)
  if kind == "conv":
    return np.ascontiguousarray(value.transpose(3, 2, 0, 1))
  if kind == "linear":
    return np.ascontiguousarray(value.T)
  return value.copy()


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
    ValueError: naming the missing variable or the unrecognised architecture.
  """
  params, batch_stats = _as_dict(params), _as_dict(batch_stats)
  if "backbone" not in params:
    params, batch_stats = {"backbone": params}, {"backbone": batch_stats}
  depth, width, stem = _infer_architecture(params["backbone"])
  heads = include_heads and "projector" in params
  entries = _backbone_entries(depth, width, stem, "module.encoder." if heads else "")
  bias_key = None
  if heads:
    proj = params["projector"]
    num_layers = sum(1 for k in proj if k.startswith("fc"))
    out_dim = int(np.shape(_get(params, ("projector", f"fc{num_layers}", "kernel")))[1])
    hidden = int(np.shape(_get(params, ("projector", "fc1", "kernel")))[1])
    entries += _projector_entries(num_layers, backbone_feature_dim(depth, width), hidden, out_dim,
                                  "module.encoder.fc.")
    bias_key = f"module.encoder.fc.{3 * (num_layers - 1)}.bias"
    if "predictor" in params:
      pred_hidden = int(np.shape(_get(params, ("predictor", "fc1", "kernel")))[1])
      entries += _predictor_entries(out_dim, pred_hidden, "module.predictor.")
  trees = {"params": params, "batch_stats": batch_stats}
  out: Dict[str, np.ndarray] = {}
  for e in entries:
    out[e.torch_key] = _to_torch_layout(_get(trees, e.path), e.kind)
    if e.torch_key.endswith(".running_var"):
      out[e.torch_key[:-len("running_var")] + _NUM_BATCHES] = np.zeros((), np.int64)
  if bias_key is not None:
    # The official last projector Linear has a frozen bias; ours is folded into
    # the running mean of the BN after it (see the module docstring).
    out[bias_key] = np.zeros((out_dim,), np.float32)
  return out


# ----------------------------------------------------------------------------- files


def save_npz(path: str, state_dict: Mapping[str, Any]) -> None:
  """Writes a state dict to an uncompressed ``.npz`` (keys kept as they are).

  Args:
    path: destination; NumPy appends '.npz' when it is missing.
    state_dict: key -> array (NumPy arrays or torch tensors).
  """
  np.savez(path, **{k: _to_numpy(v) for k, v in state_dict.items()})


def _unwrap(obj: Any, path: str) -> Mapping[str, Any]:
  """The state dict inside a checkpoint object ({'state_dict': ...}, {'model': ...} or itself)."""
  for key in ("state_dict", "model"):
    if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
      return obj[key]
  if isinstance(obj, Mapping):
    return obj
  raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict "
                   "(a dict, or a dict with a 'state_dict' or 'model' entry).")


def _torch_load(path: str) -> Any:
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(
        f"Reading {path} needs PyTorch, which is not installed. Install it "
        "(pip install torch; the CPU build is enough) or convert the file to .npz elsewhere: "
        "numpy.savez('x.npz', **{k: v.numpy() for k, v in state_dict.items()}).") from e
  try:
    return torch.load(path, map_location="cpu", weights_only=True)
  except TypeError:  # torch < 1.13 has no weights_only.
    return torch.load(path, map_location="cpu")


def load_state_dict_file(path: str) -> Dict[str, np.ndarray]:
  """Reads a state dict from ``.pth``/``.pth.tar``/``.pt`` (needs torch) or ``.npz``.

  Checkpoints that wrap the weights ({'state_dict': ...} as in the official
  SimSiam/MoCo code, or {'model': ...}) are unwrapped; entries that are not
  arrays (e.g. 'epoch', 'arch') are dropped.

  Args:
    path: the file.

  Returns:
    key -> NumPy array.

  Raises:
    FileNotFoundError: naming the path.
    ImportError: for a torch file when torch is not installed (says what to do).
    ValueError: for an unknown suffix or a file that holds no state dict.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"State dict file {path!r} does not exist.")
  if path.endswith(".npz"):
    with np.load(path, allow_pickle=False) as data:
      return {k: data[k] for k in data.files}
  if path.endswith((".pth", ".pth.tar", ".pt", ".tar")):
    state = _unwrap(_torch_load(path), path)
    out = {k: _to_numpy(v) for k, v in state.items()
           if hasattr(v, "detach") or isinstance(v, np.ndarray)}
    if not out:
      raise ValueError(f"{path} holds no tensors (keys: {sorted(state)[:10]}).")
    return out
  raise ValueError(f"Cannot read {path!r}: expected a .pth, .pth.tar, .pt or .npz file.")


# ------------------------------------------------------------------------- CLI
def export_workdir(workdir: str, out: str, *, step: Optional[int] = None,
                   include_heads: bool = True) -> Dict[str, np.ndarray]:
  """Exports a pretraining run's checkpoint to the official SimSiam / torchvision layout.

  Args:
    workdir: a pretraining workdir (its newest checkpoint unless ``step``).
    out: '.npz' (always) or '.pth' (needs torch) file to write.
    step: checkpoint step to export.
    include_heads: also export projector and predictor (SimSiam layout);
      False writes plain torchvision backbone keys.

  Returns:
    The exported state dict.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from mixsiam_jax import checkpoint, sharding  # pylint: disable=g-import-not-at-top
  mesh = sharding.create_mesh(jax.local_devices()[:1])
  tree, _, _ = checkpoint.restore_replicated(workdir, mesh, step)
  params, batch_stats = jax.device_get(tree["params"]), jax.device_get(tree["batch_stats"])
  params = {k: v for k, v in params.items() if k != "online_probe"}
  state_dict = export_torch_state_dict(params, batch_stats, include_heads=include_heads)
  if out.endswith(".npz"):
    save_npz(out, state_dict)
  elif out.endswith((".pth", ".pt", ".pth.tar")):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise ImportError(f"Writing {out} needs PyTorch; install torch or export to .npz.") from None
    torch.save({"state_dict": {k: torch.from_numpy(np.ascontiguousarray(v))
                               for k, v in state_dict.items()}}, out)
  else:
    raise ValueError(f"--out={out} must end in .npz or .pth.")
  return state_dict


def main(argv: Optional[Sequence[str]] = None) -> str:
  """``python -m mixsiam_jax.weights export --workdir=DIR --out=FILE``."""
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(
      prog="python -m mixsiam_jax.weights",
      description="Export a pretraining checkpoint to the official SimSiam/torchvision layout.")
  parser.add_argument("command", choices=["export"])
  parser.add_argument("--workdir", required=True, help="pretraining workdir")
  parser.add_argument("--out", required=True, help=".npz or .pth file to write")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
  parser.add_argument("--backbone_only", action="store_true",
                      help="torchvision ResNet keys only (no projector/predictor)")
  args = parser.parse_args(argv)
  state_dict = export_workdir(args.workdir, args.out, step=args.step,
                              include_heads=not args.backbone_only)
  print(f"Wrote {len(state_dict)} tensors to {args.out}")
  return args.out


if __name__ == "__main__":
  main()
