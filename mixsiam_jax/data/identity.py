"""The identity of a data set: a fingerprint of its content, cheap enough for every start.

A run records each data set's number of examples and classes (data.json); a
data set whose files were replaced one for one keeps those counts, so the
record adds a fingerprint (16 hex digits of a SHA-256) of what defines the
examples:
  * ``folder:PATH``: the class names, and the name (relative to PATH) and size
    in bytes of every file of the split, in listing order. The split's files,
    not the whole folder's: they are what the run reads, and a held-out part
    may change without changing them (a per-class slice such as ``[:4500]``
    keeps its files while others are added after them). Sizes, not contents:
    reading every file would cost a pass over the data set; a file edited to
    the same size is not seen. Modification times are left out because copies
    and restores change them without changing the data.
  * ``tfds:NAME``: the builder's full name (name, config and version, e.g.
    ``cifar10/3.0.2``), the split and its number of examples; a prepared TFDS
    version does not change.

Cost: one listing and one stat per file. The stats run in a thread pool, in
chunks, for network filesystems where each is a round trip. 50,000 files take
0.3-0.4 s, listing included, on a local disk (warm cache; docs/operations.md).
"""
import concurrent.futures
import dataclasses
import hashlib
import os
from typing import Dict, List, Optional, Sequence

from mixsiam_jax.data import DatasetError, folders, sources
from mixsiam_jax.options import data_names

# Hex digits kept of the SHA-256: 64 bits, ample for telling two versions of one data set apart.
FINGERPRINT_DIGITS = 16
# Files stat'ed per task: large enough that the pool's overhead stays small on a local
# disk, small enough that a network filesystem's latency is spread over the threads.
_STAT_CHUNK = 1024
_STAT_THREADS = 16


@dataclasses.dataclass(frozen=True)
class Identity:
  """What identifies the content of one split of a data set.

  Attributes:
    fingerprint: FINGERPRINT_DIGITS hex digits (see the module docstring).
    tfds_version: the TFDS builder's full name, e.g. 'cifar10/3.0.2' (None for folders).
  """
  fingerprint: str
  tfds_version: Optional[str] = None

  def record(self) -> Dict[str, str]:
    """The fields that data.json records (the fingerprint, and the TFDS version if any)."""
    fields = {"fingerprint": self.fingerprint}
    if self.tfds_version is not None:
      fields["tfds_version"] = self.tfds_version
    return fields


def _digest(parts: Sequence[str]) -> str:
  """FINGERPRINT_DIGITS hex digits of the SHA-256 of ``parts``, each ended by a NUL."""
  h = hashlib.sha256()
  for part in parts:
    # surrogateescape: file names that are not UTF-8 still hash (as their bytes).
    h.update(part.encode("utf-8", "surrogateescape") + b"\0")
  return h.hexdigest()[:FINGERPRINT_DIGITS]


def _stat_chunk(paths: Sequence[str], field: str) -> List[int]:
  sizes = []
  for path in paths:
    try:
      sizes.append(os.stat(path).st_size)
    except OSError as e:
      raise DatasetError(f"--config.{field}: cannot read {path!r} ({e.strerror}).") from None
  return sizes


def file_sizes(paths: Sequence[str], field: str = "dataset") -> List[int]:
  """The size in bytes of each file of ``paths``, stat'ed in a thread pool.

  Args:
    paths: file paths.
    field: the config field of the data set, named in the error.

  Returns:
    The sizes, in the order of ``paths``.

  Raises:
    DatasetError: a file cannot be stat'ed (gone, permission), naming it.
  """
  chunks = [paths[i:i + _STAT_CHUNK] for i in range(0, len(paths), _STAT_CHUNK)]
  if len(chunks) <= 1:
    return _stat_chunk(paths, field)
  with concurrent.futures.ThreadPoolExecutor(min(_STAT_THREADS, len(chunks))) as pool:
    # os.stat releases the GIL, so the threads' round trips overlap.
    return [size for sizes in pool.map(lambda c: _stat_chunk(c, field), chunks)
            for size in sizes]


def folder_fingerprint(root: str, class_names: Sequence[str], paths: Sequence[str],
                       sizes: Sequence[int]) -> str:
  """The fingerprint of a folder split: its class names, file names (relative) and sizes.

  Args:
    root: the data set folder; ``paths`` are named relative to it, so that the
      same files under another path (a moved or remounted copy) keep the fingerprint.
    class_names: the sorted class folder names (labels are their indices).
    paths: the split's files, in listing order.
    sizes: their sizes in bytes.

  Returns:
    FINGERPRINT_DIGITS hex digits.
  """
  prefix = os.path.join(root, "")
  relative = (p[len(prefix):] if p.startswith(prefix) else os.path.relpath(p, root)
              for p in paths)
  parts = [f"classes {len(class_names)}", *class_names, f"files {len(paths)}"]
  for name, size in zip(relative, sizes):
    parts += (name, str(size))
  return _digest(parts)


def tfds_fingerprint(full_name: str, split: str, num_examples: int) -> str:
  """The fingerprint of a TFDS split: builder full name (name/config/version), split, size."""
  return _digest(["tfds", full_name, split, str(num_examples)])


def identify(dataset: str, split: str, *, field: str = "dataset",
             tfds_options: sources.TfdsOptions = sources.TfdsOptions()) -> Identity:
  """The Identity of a split of ``dataset``; reads no image.

  Args:
    dataset: 'folder:PATH' or 'tfds:NAME'.
    split: the split, as sources.open_source takes it.
    field: the config field that gave ``dataset``, named in errors.
    tfds_options: where the TFDS data set is prepared (its data_dir).

  Returns:
    The Identity.

  Raises:
    DatasetError: as sources.open_source, or a file that cannot be stat'ed.
  """
  kind, rest = data_names.parse_dataset(dataset, field)
  if kind == "folder":
    root = os.path.abspath(os.path.expanduser(rest))
    listing = folders.list_split(root, split, field)
    return Identity(folder_fingerprint(root, listing.class_names, listing.paths,
                                       file_sizes(listing.paths, field)))
  num_examples = sources.get_dataset_info(dataset, split, field=field,
                                          tfds_options=tfds_options).num_examples
  full_name = sources.tfds_builder(rest, tfds_options.data_dir, field).info.full_name
  return Identity(tfds_fingerprint(full_name, split, num_examples), tfds_version=full_name)
