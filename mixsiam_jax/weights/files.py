"""Weight files (.npz, .pth) and the export command line.

  python -m mixsiam_jax.weights export --workdir=DIR --out=FILE.npz   # or .pth (needs torch)
"""
import argparse
import os
import pickle
import zipfile
from typing import Any, Dict, Mapping, Optional, Sequence

import jax
import numpy as np

from mixsiam_jax import sharding
from mixsiam_jax.checkpoints import reader
from mixsiam_jax.run import cli
from mixsiam_jax.weights import convert

TORCH_SUFFIXES = (".pth", ".pth.tar", ".pt", ".tar")


class WeightsFileNotFoundError(convert.WeightsError, FileNotFoundError):
  """The weight file does not exist."""


class TorchMissingError(convert.WeightsError, ImportError):
  """A .pth file is read or written, and PyTorch is not installed."""


def save_npz(path: str, state_dict: Mapping[str, Any]) -> None:
  """Writes a state dict to an uncompressed ``.npz`` (keys kept as they are).

  Args:
    path: destination; NumPy appends '.npz' when it is missing.
    state_dict: key -> array (NumPy arrays or torch tensors).
  """
  np.savez(path, **{k: convert.to_numpy(v) for k, v in state_dict.items()})


def _unwrap(obj: Any, path: str) -> Mapping[str, Any]:
  """The state dict inside a checkpoint object ({'state_dict': ...}, {'model': ...} or itself)."""
  for key in ("state_dict", "model"):
    if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
      return obj[key]
  if isinstance(obj, Mapping):
    return obj
  raise convert.WeightsError(f"{path} holds a {type(obj).__name__}, not a state dict "
                             "(a dict, or a dict with a 'state_dict' or 'model' entry).")


def _import_torch(path: str, reading: bool) -> Any:
  """The torch module, or TorchMissingError saying what to do instead."""
  try:
    # Optional dependency (not in requirements.txt): only .pth files need it.
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    instead = ("or convert the file to .npz where torch is installed: numpy.savez('x.npz', "
               "**{k: v.numpy() for k, v in state_dict.items()})" if reading
               else "or export to .npz instead (--out=FILE.npz)")
    raise TorchMissingError(f"{'Reading' if reading else 'Writing'} {path} needs PyTorch, which "
                            "is not installed: pip install torch (the CPU build is enough), "
                            f"{instead}.") from None
  return torch


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
    WeightsFileNotFoundError: naming the path.
    TorchMissingError: for a torch file when torch is not installed (says what to do).
    WeightsError: for an unknown suffix, a file its reader cannot parse (one line
      naming it and the reason), or a file that holds no state dict.
  """
  if not os.path.isfile(path):
    raise WeightsFileNotFoundError(f"State dict file {path!r} does not exist.")
  if path.endswith(".npz"):
    return _load_npz(path)
  if not path.endswith(TORCH_SUFFIXES):
    raise convert.WeightsError(f"Cannot read {path!r}: expected a .pth, .pth.tar, .pt or .npz "
                               "file.")
  torch = _import_torch(path, reading=True)
  try:
    loaded = torch.load(path, map_location="cpu", weights_only=True)
  except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError,
          zipfile.BadZipFile) as e:
    raise _unreadable(path, e, "torch.save") from e
  state = _unwrap(loaded, path)
  out = {k: convert.to_numpy(v) for k, v in state.items()
         if hasattr(v, "detach") or isinstance(v, np.ndarray)}
  if not out:
    raise convert.WeightsError(f"{path} holds no tensors (keys: {sorted(state)[:10]}).")
  return out


def _load_npz(path: str) -> Dict[str, np.ndarray]:
  """key -> array of an .npz file; WeightsError for anything else under that name."""
  try:
    with open(path, "rb") as f:
      head = f.read(6)
    if head.startswith(b"\x93NUMPY"):
      raise ValueError("a single .npy array, not named arrays")
    if not head.startswith(b"PK"):  # an .npz is a zip archive
      raise ValueError("not a zip archive, which an .npz file is")
    with np.load(path, allow_pickle=False) as data:
      return {k: data[k] for k in data.files}
  except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
    raise _unreadable(path, e, "numpy.savez") from e


def _unreadable(path: str, error: BaseException, writer: str) -> convert.WeightsError:
  """The one-line error for a weight file that its reader cannot parse."""
  lines = str(error).strip().splitlines()
  reason = (lines[0] if lines else type(error).__name__)[:200]
  return convert.WeightsError(
      f"{path} is not a readable state-dict file ({reason}); pass a file written by {writer} "
      "(e.g. python -m mixsiam_jax.weights export) or a pretraining workdir.")


def _check_export_target(out: str) -> Optional[Any]:
  """Checks ``out`` before anything is restored; returns torch for a .pth target."""
  folder = os.path.dirname(os.path.abspath(out))
  if not os.path.isdir(folder):
    raise convert.WeightsError(f"--out={out}: the folder {folder} does not exist; create it "
                               f"(mkdir -p {folder}) or write elsewhere.")
  if out.endswith(".npz"):
    return None
  if out.endswith((".pth", ".pt", ".pth.tar")):
    return _import_torch(out, reading=False)
  raise convert.WeightsError(f"--out={out} must end in .npz or .pth.")


def export_workdir(workdir: str, out: str, *, step: Optional[int] = None,
                   include_heads: bool = True) -> Dict[str, np.ndarray]:
  """Exports a pretraining run's checkpoint to the official SimSiam / torchvision layout.

  Args:
    workdir: a pretraining workdir (its newest checkpoint unless ``step``).
    out: '.npz' (always) or '.pth' (needs torch) file to write, in an existing folder.
    step: checkpoint step to export.
    include_heads: also export projector and predictor (SimSiam layout);
      False writes plain torchvision backbone keys.

  Returns:
    The exported state dict.

  Raises:
    WeightsError: the workdir or the target folder is missing, the suffix
      unknown, or torch is needed and missing (checked before the checkpoint is read).
  """
  torch = _check_export_target(out)
  if not os.path.isdir(workdir):
    raise convert.WeightsError(f"--workdir={workdir} does not exist; pass the --workdir of a "
                               "pretraining run.")
  mesh = sharding.create_mesh(jax.local_devices()[:1])
  tree, _, _ = reader.restore_replicated(workdir, mesh, step, field="--workdir")
  params, batch_stats = jax.device_get(tree["params"]), jax.device_get(tree["batch_stats"])
  params = {k: v for k, v in params.items() if k != "online_probe"}
  state_dict = convert.export_torch_state_dict(params, batch_stats,
                                               include_heads=include_heads)
  if torch is None:
    save_npz(out, state_dict)
  else:
    torch.save({"state_dict": {k: torch.from_numpy(np.ascontiguousarray(v))
                               for k, v in state_dict.items()}}, out)
  return state_dict


def main(argv: Optional[Sequence[str]] = None) -> str:
  """``python -m mixsiam_jax.weights export --workdir=DIR --out=FILE``; returns FILE.

  Raises:
    UserError (WeightsError, CheckpointError): a bad input, named in one line by
      __main__ (cli.run_tool).
  """
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
  # After the flags (--help answers at once): libtpu's search for a TPU is not shown.
  cli.start_jax()
  state_dict = export_workdir(args.workdir, args.out, step=args.step,
                              include_heads=not args.backbone_only)
  print(f"Wrote {len(state_dict)} tensors to {args.out}")
  return args.out

