"""Checksums of a checkpoint's arrays: recorded with each step, verified when it is restored.

Orbax records nothing about what a saved array should contain: its zarr3 layout
checksums (crc32c) only the index of each shard file, not the chunks, and the
default layout (zarr2 chunks in OCDBT data files) nothing, so a flipped byte in
an array file restores silently. storage.save records the CRC-32 of every
array's bytes, computed on the host from the values being saved, in the step's
'meta' item; storage.restore recomputes them from the restored values and
treats a difference like an unreadable step.

Every process computes the checksums of its own copy: the state is replicated,
so each process holds whole arrays. An array no process holds whole (sharded
over several processes) is neither recorded nor verified.
"""
import concurrent.futures
import os
import zlib
from typing import Any, Dict, Iterable, List, Optional, Tuple

import jax
import numpy as np

# The key of the 'meta' item that holds them, and the one algorithm so far.
KEY = "checksums"
ALGORITHM = "crc32"
# zlib.crc32 releases the GIL: a few threads cover the big arrays at once.
_THREADS = min(8, os.cpu_count() or 1)


class ChecksumMismatch(ValueError):
  """A restored array differs from the one that was saved."""


def path_name(path: Tuple[Any, ...]) -> str:
  """'params/backbone/conv1/kernel' for a tree path, whatever the containers.

  The restore target of a probe is built from Orbax's metadata, where an
  optimiser state's named tuples are dicts: names, not container types, must
  match the ones recorded at save.
  """
  parts = []
  for key in path:
    for attribute in ("key", "name", "idx"):  # DictKey, GetAttrKey, SequenceKey
      if hasattr(key, attribute):
        parts.append(str(getattr(key, attribute)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def _whole_local_value(leaf: Any) -> Optional[np.ndarray]:
  """The whole value of ``leaf`` on this host; None where this process holds only part of it."""
  if isinstance(leaf, jax.Array):
    if leaf.is_fully_replicated:
      # One device's copy: no gather, and no copy at all on a CPU.
      return np.asarray(leaf.addressable_shards[0].data)
    if leaf.is_fully_addressable:
      return np.asarray(leaf)
    return None
  return np.asarray(leaf)


def _crc(value: np.ndarray) -> str:
  """'float32:1a2b3c4d': the dtype and the CRC-32 of the bytes of ``value``."""
  data = np.ascontiguousarray(value).reshape(-1).view(np.uint8)
  return f"{value.dtype}:{zlib.crc32(data):08x}"


def _checksums(named: Iterable[Tuple[str, Any]]) -> Dict[str, str]:
  """{name: _crc(whole local value)} of the leaves held whole here, largest first, in threads."""
  values = [(name, v) for name, v in ((n, _whole_local_value(leaf)) for n, leaf in named)
            if v is not None]
  values.sort(key=lambda item: -item[1].nbytes)
  with concurrent.futures.ThreadPoolExecutor(_THREADS) as pool:
    crcs = list(pool.map(lambda item: _crc(item[1]), values))
  return {name: crc for (name, _), crc in zip(values, crcs)}


def _named_leaves(tree: Any) -> List[Tuple[str, Any]]:
  return [(path_name(p), leaf) for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def record(tree: Any) -> Dict[str, Any]:
  """What save() records of ``tree``: the algorithm and one 'dtype:crc' per array.

  Args:
    tree: the tree being saved (jax.Arrays, numpy arrays or scalars); arrays
      still being computed are waited for.

  Returns:
    {'algorithm': 'crc32', 'arrays': {path_name: 'dtype:crc'}} (JSON).
  """
  return {"algorithm": ALGORITHM, "arrays": _checksums(_named_leaves(tree))}


def split(meta: Optional[Dict[str, Any]]) -> Tuple[Dict[str, Any], Optional[Dict[str, Any]]]:
  """(the metadata the caller saved, the recorded checksums or None for an older checkpoint)."""
  meta = dict(meta or {})
  return meta, meta.pop(KEY, None)


def verify(tree: Any, recorded: Dict[str, Any]) -> int:
  """Checks the arrays of a restored ``tree`` (or a part of the saved one) against ``recorded``.

  An array not recorded, or restored with another dtype than saved (Orbax
  casts to the target's dtype), is not compared.

  Args:
    tree: the restored tree; its paths name arrays as at save.
    recorded: what record() returned at save.

  Returns:
    The number of arrays verified.

  Raises:
    ChecksumMismatch: naming the first array (by path) that differs, or an
      algorithm this version does not know.
  """
  if recorded.get("algorithm") != ALGORITHM:
    raise ChecksumMismatch(f"its checksums use {recorded.get('algorithm')!r}, which this "
                           f"version does not know (it knows {ALGORITHM!r})")
  arrays = recorded.get("arrays", {})
  named = [(n, leaf) for n, leaf in _named_leaves(tree) if n in arrays]
  actual = _checksums(named)
  compared = {n: c for n, c in actual.items() if c.split(":")[0] == arrays[n].split(":")[0]}
  for name in sorted(compared):
    if compared[name] != arrays[name]:
      raise ChecksumMismatch(
          f"array {name} does not match the checksum recorded when it was saved: CRC-32 "
          f"{compared[name].split(':')[1]}, saved {arrays[name].split(':')[1]}")
  return len(compared)


def verify_restored(tree: Dict[str, Any], saved_meta: Optional[Dict[str, Any]]
                    ) -> Tuple[Dict[str, Any], Dict[str, Any], bool]:
  """Checks a restored state ``tree`` against the checksums in the metadata saved with it.

  Args:
    tree: the restored state of a step (all of it or some entries).
    saved_meta: the step's 'meta' item as saved.

  Returns:
    (tree, the metadata without the checksums, whether checksums were recorded:
    a checkpoint written before they were has none).

  Raises:
    ChecksumMismatch: an array differs from the one saved (storage.py turns
      it into a CheckpointError, see broken_step_error).
  """
  meta, recorded = split(saved_meta)
  if recorded is not None:
    verify(tree, recorded)
  return tree, meta, recorded is not None
