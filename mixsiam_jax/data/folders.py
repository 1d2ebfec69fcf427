"""Image folders: the listing of PATH/<class>/<image> and the slices a folder split selects.

Listing. Labels are the index of each class in the sorted names of the
non-hidden sub-folders of PATH; files are found recursively below each class
folder, in sorted order (files of a folder first, then its sub-folders). A
folder without sub-folders is one unlabelled class (label -1, pretraining
only). Files whose extension is not an image extension, and loose files beside
class folders, are returned as ``non_images`` for the caller to report. Every
class folder must hold at least one image: an empty one would still take a
label and shift the labels of the classes after it, so it is refused.

Links. Linked class folders and linked files are read like any other. A linked
folder below a class folder is followed only if it leads outside the folders
being listed: a link back to the folder it sits in or to one of its parents (a
loop such as ``cat/loop -> .``), or into the data set or any class folder, would
list the same images again (under a second path, or without end). Such links
are skipped with one warning that names them and the number of images listed.

Splits: the folder split grammar is options/data_names.py's (parse_folder_split).
"""
import dataclasses
import os
from typing import List, Sequence, Set, Tuple

from absl import logging
import numpy as np

from mixsiam_jax.data import DatasetError
from mixsiam_jax.options.data_names import FOLDER_SPLIT_SYNTAX, parse_folder_split

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")



@dataclasses.dataclass(frozen=True)
class FolderListing:
  """What an image folder holds, in listing order.

  Attributes:
    paths: image file paths.
    labels: label of each path (-1 for a flat, unlabelled folder).
    class_names: sorted class folder names (empty for a flat folder).
    non_images: files that are not images (by extension), to be reported.
    skipped_links: 'link -> target' of each folder link not followed.
  """
  paths: Tuple[str, ...]
  labels: Tuple[int, ...]
  class_names: Tuple[str, ...]
  non_images: Tuple[str, ...]
  skipped_links: Tuple[str, ...]


def _is_image(path: str) -> bool:
  return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def _scan(folder: str) -> Tuple[List[str], Set[str], List[str]]:
  """Non-hidden (sorted sub-folders, the links among them, sorted other entries) of ``folder``."""
  dirs, links, files = [], set(), []
  try:
    with os.scandir(folder) as it:
      for entry in it:
        if entry.name.startswith("."):
          continue
        try:
          is_dir = entry.is_dir()  # Follows links; a broken link is a (bad) file.
        except OSError:
          is_dir = False
        if is_dir:
          dirs.append(entry.name)
          if entry.is_symlink():
            links.add(entry.name)
        else:
          files.append(entry.name)
  except OSError as e:
    raise DatasetError(f"Cannot list image folder {folder!r}: {e}.") from None
  return sorted(dirs), links, sorted(files)


def _under(path: str, folder: str) -> bool:
  return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _walk_class(top: str, listed: Sequence[str], skipped: List[str]) -> List[str]:
  """Files below class folder ``top`` in os.walk order, without looping links.

  Args:
    top: the class folder.
    listed: real paths of the data set folder and of every class folder.
    skipped: receives 'link -> target' of each folder link not followed.

  Returns:
    File paths (images and others), files of a folder before its sub-folders.
  """
  out = []

  def visit(folder, chain):
    dirs, links, files = _scan(folder)
    out.extend(os.path.join(folder, f) for f in files)
    for d in dirs:
      path = os.path.join(folder, d)
      real = os.path.realpath(path)
      if d in links and (any(_under(real, r) for r in listed)
                         or any(_under(c, real) for c in chain)):
        skipped.append(f"{path} -> {real}")
        continue
      visit(path, chain + (real,))

  visit(top, (os.path.realpath(top),))
  return out


def _check_class_sizes(path: str, class_names, labels) -> None:
  counts = np.bincount(np.asarray(labels, np.int64), minlength=len(class_names))
  empty = [os.path.join(path, c) for c, n in zip(class_names, counts) if n == 0]
  if empty:
    raise DatasetError(
        f"Class folder(s) {', '.join(repr(e) for e in empty)} hold no images "
        f"({', '.join(IMAGE_EXTENSIONS)}); labels are the index of the sorted class folders, "
        "so an empty one would shift every label after it. Add images or remove the folder(s).")


# (folder, skipped links) already named in a warning by this process.
_WARNED_LINKS = set()


def list_folder(path: str, field: str = "dataset") -> FolderListing:
  """Lists an image folder (see the module docstring); reads no image.

  Args:
    path: the folder (PATH/<class>/<image>, or a flat folder of images).
    field: the config field that named the folder, for error messages.

  Returns:
    FolderListing of the folder.

  Raises:
    DatasetError: missing folder, no images at all, or an empty class folder.
  """
  if not os.path.exists(path):
    raise DatasetError(f"Image folder {path!r} does not exist; check --config.{field}="
                       "folder:PATH (PATH/<class>/<image>).")
  if not os.path.isdir(path):
    raise DatasetError(f"{path!r} is not a folder; --config.{field}=folder:PATH needs "
                       "PATH/<class>/<image>.")
  classes, links, loose = _scan(path)
  root = os.path.realpath(path)
  skipped = []
  for name in sorted(links):
    real = os.path.realpath(os.path.join(path, name))
    # A link to the folder (or above it) would list every image again under a class of its
    # own; a link into the folder is a second path to images that are listed already.
    if _under(root, real) or _under(real, root):
      skipped.append(f"{os.path.join(path, name)} -> {real}")
      classes.remove(name)
  listed = [root] + [os.path.realpath(os.path.join(path, c)) for c in classes]
  paths, labels, others = [], [], []
  for label, name in enumerate(classes):
    for f in _walk_class(os.path.join(path, name), listed, skipped):
      if _is_image(f):
        paths.append(f)
        labels.append(label)
      else:
        others.append(f)
  for f in loose:
    f = os.path.join(path, f)
    if not classes and _is_image(f):
      paths.append(f)
      labels.append(-1)
    else:  # Loose files beside class folders are not examples.
      others.append(f)
  if not paths:
    raise DatasetError(f"Image folder {path!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                       "expected PATH/<class>/<image> or a flat folder of images.")
  if classes:
    _check_class_sizes(path, classes, labels)
  if skipped and (path, tuple(skipped)) not in _WARNED_LINKS:
    # Once per process: the program lists a folder several times (checks, streams rebuilt).
    _WARNED_LINKS.add((path, tuple(skipped)))
    logging.warning(
        "Image folder %s: did not follow %d folder link(s) that lead back into the folders "
        "being listed (a loop, or a second path to the same images): %s. Each image is listed "
        "once: %d images in %d class(es).", path, len(skipped), "; ".join(skipped[:5])
        + ("; ..." if len(skipped) > 5 else ""), len(paths), max(len(classes), 1))
  return FolderListing(tuple(paths), tuple(labels), tuple(classes), tuple(others),
                       tuple(skipped))


def list_split(path: str, split: str, field: str = "dataset") -> FolderListing:
  """Lists an image folder and keeps the files that ``split`` selects (the run's examples).

  Args:
    path: the folder, as list_folder takes it.
    split: a folder split string.
    field: the config field that named the folder; a bad split names its own field
      (train_split, eval_split) and is refused before the folder is listed.

  Returns:
    The FolderListing with ``paths`` and ``labels`` of the split only (class
    names, non-images and skipped links of the whole folder).

  Raises:
    DatasetError: as list_folder, a bad split, or a split that selects nothing.
  """
  parse_folder_split(split, {"dataset": "train_split",
                             "eval_dataset": "eval_split"}.get(field, f"{field} split"))
  listing = list_folder(path, field)
  keep = folder_split_indices(listing.labels, split)
  if not keep.size:
    raise DatasetError(f"Split {split!r} selects no image of folder {path!r} "
                       f"({len(listing.paths)} images in {max(len(listing.class_names), 1)} "
                       f"class(es)); accepted: {FOLDER_SPLIT_SYNTAX}.")
  if keep.size == len(listing.paths):
    return listing
  return dataclasses.replace(listing, paths=tuple(listing.paths[i] for i in keep),
                             labels=tuple(listing.labels[i] for i in keep))


def folder_split_indices(labels: Sequence[int], split: str) -> np.ndarray:
  """Indices (ascending) of the examples that ``split`` selects, class by class.

  Args:
    labels: label of each example, in listing order.
    split: a folder split string.

  Returns:
    int64 array of the selected positions in ``labels``.
  """
  start, stop, percent = parse_folder_split(split)
  labels = np.asarray(labels)
  if start is None and stop is None:
    return np.arange(len(labels))
  selected = []
  for label in np.unique(labels):
    ids = np.flatnonzero(labels == label)  # Listing order within the class.
    n = len(ids)
    to_abs = (lambda b: None if b is None else int(round(b * n / 100.0))) if percent else (
        lambda b: b)
    selected.append(ids[slice(to_abs(start), to_abs(stop))])
  return np.sort(np.concatenate(selected))
