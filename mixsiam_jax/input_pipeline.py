"""tf.data input pipelines: TFDS or image folders -> per-process batches of two views.

Sources (``dataset`` strings):
  * ``tfds:NAME`` (any TFDS image-classification data set; ``split`` is any TFDS
    split string such as ``train[:90%]``). Read through ``tfds.data_source``
    (random access; needs the array_record file format, ``tfds build NAME
    --file_format=array_record``) and otherwise through ``tfds.load`` in its
    canonical order (see "Determinism" for what differs).
  * ``folder:PATH``: PATH/<class>/<file> (labels = index in the sorted class
    folder names; files found recursively below each class folder) or a flat
    folder of images (label -1, pretraining only). JPEG, PNG, BMP and GIF
    (first frame); grayscale, CMYK, RGBA and palette images become RGB. Files
    are listed once; they are read lazily and in parallel, never all loaded.
    ``split`` slices every class separately (see "Folder splits").

Folder splits. For ``folder:`` data sets the split string selects a slice of
each class's file list (files in listing order: sorted, recursively), so a
held-out part keeps the class balance of the folder:
  * ``''``, ``train``, ``all`` (any bare name; the name is ignored, there is
    only one folder): every file.
  * ``[A:B]`` or ``NAME[A:B]`` (NAME ignored), Python slice semantics within
    each class: ``[:4500]`` the first 4500 files of every class, ``[4500:]``
    the rest, ``[-500:]`` the last 500, ``[10:20]``; a class with fewer files
    gets what the slice leaves of it.
  * Percentages ``[:90%]``, ``[90%:]``, ``[10%:20%]`` (decimals allowed, both
    bounds in %): a bound of p% of a class of n files is ``round(p * n / 100)``
    (Python's round, halves to even), exactly TFDS's default 'closest' rounding,
    so ``[:p%]`` and ``[p%:]`` are complementary, disjoint and cover each class.
A flat (unlabelled) folder is one class. Anything else raises DatasetError.

Determinism and resume. The training stream is a pure function of
(seed, position, data). Global position ``g`` (row ``g % B`` of step
``g // B``, B the global batch) maps to epoch ``e = g // num_examples`` and
the example ``index_shuffle(g % num_examples, seed=(seed, e))``, a stateless
permutation of all example ids per epoch
(``tf.random.experimental.index_shuffle``). Process ``p`` loads rows
``[p * B_local, (p + 1) * B_local)`` of every step, the rows its devices hold
in the global batch, so the global batch of a step is the same whatever the
number of processes (a 2-process run trains on exactly the batches of a
1-process run, row for row). The processes' rows are disjoint, every epoch is
covered exactly, and ``start_step`` skips at the index level without reading
anything. Each example's augmentation draws from stateless
TF random ops seeded by ``fold_in(fold_in((seed, e), index))``; parallel maps
keep ``deterministic=True`` order. Two runs with the same seed therefore give
bit-identical batches, and ``start_step=s`` gives exactly the batches a straight
run gives from step ``s`` on.

For a TFDS data set stored as TFRecords (no random access) the epoch order is
instead a seeded ``shuffle`` (buffer ``shuffle_buffer``) of this process's
examples (``index % process_count == process_index``) in canonical order, and
``start_step`` skips the first ``offset`` examples of the current epoch
without decoding them (their bytes are still read). Still a pure function of
(seed, step), but the global batches then depend on the number of processes.

Bad images. Each file's bytes get a cheap in-graph check (non-empty, known
magic bytes, JPEG/PNG/GIF end markers); files that fail it go through PIL
(``tf.py_function``), which also reads formats TensorFlow cannot. Files PIL
cannot read either are reported once each (``logging.warning`` with the path,
running count in ``bad_images()``) and, with ``skip_bad_images``, replaced in
their training batch by another example of the same batch (so batch shapes
and the position arithmetic above stay exact) or masked out of evaluation
batches; with ``skip_bad_images=False`` they raise. A file that passes the
check and still fails TensorFlow's decoder (rare: corrupt entropy data) is
dropped by ``ignore_errors`` when skipping, which shifts later positions by
one; runs stay reproducible but ``start_step`` resume is then only exact up to
that shift.
"""
import dataclasses
import functools
import os
import re
import threading
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from mixsiam_jax import augment
from mixsiam_jax.options import PhotometricOptions

try:  # The pipeline runs on host CPUs; keep TF off the accelerators JAX uses.
  tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # Devices were already initialised; nothing to hide then.
  pass

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
EVAL_TRANSFORMS = ("identity", "resize_center_crop")
# torchvision RandomResizedCrop defaults.
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
CROP_ATTEMPTS = 10


class DatasetError(ValueError):
  """A data set cannot be used; the message names it and says how to fix it."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Size and label count of one split (num_classes 0 for unlabelled folders)."""
  num_examples: int
  num_classes: int


# --------------------------------------------------------------------------
# Bad-image bookkeeping (reported once per file).
# --------------------------------------------------------------------------
_BAD_LOCK = threading.Lock()
_BAD_IMAGES: Dict[str, str] = {}


def bad_images() -> Dict[str, str]:
  """Returns {path or example name: reason} of every unreadable image seen so far."""
  with _BAD_LOCK:
    return dict(_BAD_IMAGES)


def _report_bad(name: str, reason: str, skip: bool) -> None:
  """Logs a bad image once; raises DatasetError instead when not skipping."""
  if not skip:
    raise DatasetError(f"Unreadable image {name}: {reason}. Remove it, or set "
                       "skip_bad_images=True (--config.data.skip_bad_images=True) to skip it.")
  with _BAD_LOCK:
    if name in _BAD_IMAGES:
      return
    _BAD_IMAGES[name] = reason
    count = len(_BAD_IMAGES)
  logging.warning("Skipping unreadable image %s (%s); %d bad image(s) so far.", name, reason,
                  count)


# --------------------------------------------------------------------------
# Sources.
# --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Source:
  """Where examples come from.

  Exactly one of ``fetch`` (random access: int64 index -> (bytes, label, name))
  and ``sequential`` (canonical-order tf.data.Dataset of dicts with keys
  bytes, label, index, name) is set.
  """
  num_examples: int
  num_classes: int
  fetch: Optional[Callable] = None
  sequential: Optional[tf.data.Dataset] = None


def _parse_dataset(dataset: str) -> Tuple[str, str]:
  """'tfds:NAME' | 'folder:PATH' -> (kind, rest)."""
  kind, sep, rest = dataset.partition(":")
  if not sep or kind not in ("tfds", "folder") or not rest:
    raise DatasetError(f"dataset={dataset!r} must be 'tfds:NAME' (e.g. tfds:cifar10) or "
                       "'folder:PATH' (PATH/<class>/<image>).")
  return kind, rest


@functools.lru_cache(maxsize=16)
def _list_folder(path: str) -> Tuple[Tuple[str, ...], Tuple[int, ...], Tuple[str, ...],
                                     Tuple[str, ...]]:
  """Lists an image folder once.

  Returns:
    (image paths, labels, class names, non-image file paths), sorted.
  """
  if not os.path.exists(path):
    raise DatasetError(f"Image folder {path!r} does not exist; check --config.dataset="
                       "folder:PATH (PATH/<class>/<image>).")
  if not os.path.isdir(path):
    raise DatasetError(f"{path!r} is not a folder; folder:PATH needs PATH/<class>/<image>.")
  entries = sorted(e for e in os.listdir(path) if not e.startswith("."))
  classes = [e for e in entries if os.path.isdir(os.path.join(path, e))]
  paths, labels, others = [], [], []

  def add(file_path, label):
    if os.path.splitext(file_path)[1].lower() in IMAGE_EXTENSIONS:
      paths.append(file_path)
      labels.append(label)
    else:
      others.append(file_path)

  if classes:
    for label, name in enumerate(classes):
      for root, dirs, files in os.walk(os.path.join(path, name), followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
          if not f.startswith("."):
            add(os.path.join(root, f), label)
    for e in entries:  # Loose files beside class folders are not examples.
      if not os.path.isdir(os.path.join(path, e)):
        others.append(os.path.join(path, e))
  else:
    for e in entries:
      add(os.path.join(path, e), -1)
  if not paths:
    raise DatasetError(f"Image folder {path!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                       "expected PATH/<class>/<image> or a flat folder of images.")
  return tuple(paths), tuple(labels), tuple(classes), tuple(others)


FOLDER_SPLIT_SYNTAX = (
    "'' / 'train' / 'all' (the whole folder) or a per-class slice '[A:B]' or 'NAME[A:B]' "
    "(NAME ignored) with A, B integers or percentages, e.g. '[:4500]', '[4500:]', '[-500:]', "
    "'[:90%]', '[90%:]', '[10:20]', 'train[:90%]'")
_FOLDER_SPLIT_RE = re.compile(r"^(?P<name>[\w-]*)\s*(?:\[(?P<from>[^\[\]:]*):(?P<to>[^\[\]:]*)\])?$")
_FOLDER_BOUND_RE = re.compile(r"^(?P<val>[+-]?\d+(?:\.\d*)?)(?P<pct>%?)$")


def parse_folder_split(split: str) -> Tuple[Optional[float], Optional[float], bool]:
  """Parses a folder split string (see "Folder splits" above).

  Args:
    split: e.g. '', 'train', '[:4500]', 'train[90%:]'.

  Returns:
    (start, stop, percent): slice bounds (None = open), in percent if
    ``percent`` else in files.

  Raises:
    DatasetError: naming ``split`` and the accepted syntax.
  """
  def bad(why):
    return DatasetError(f"Invalid split {split!r} for a folder: dataset ({why}). "
                        f"Accepted: {FOLDER_SPLIT_SYNTAX}.")

  match = _FOLDER_SPLIT_RE.match((split or "").strip())
  if not match:
    raise bad("not NAME or [A:B]")
  if match.group("from") is None:
    return None, None, False
  bounds, units = [], set()
  for text in (match.group("from").strip(), match.group("to").strip()):
    if not text:
      bounds.append(None)
      continue
    b = _FOLDER_BOUND_RE.match(text)
    if not b:
      raise bad(f"bound {text!r} is not an integer or a percentage")
    percent = bool(b.group("pct"))
    units.add(percent)
    if percent:
      value = float(b.group("val"))
      if abs(value) > 100:
        raise bad(f"bound {text!r} is outside [-100%, 100%]")
    elif "." in b.group("val"):
      raise bad(f"bound {text!r}: file counts must be integers")
    else:
      value = int(b.group("val"))
    bounds.append(value)
  if len(units) > 1:
    raise bad("both bounds must be counts or both percentages")
  return bounds[0], bounds[1], units == {True}


def _split_indices(labels: Sequence[int], split: str) -> np.ndarray:
  """Indices (ascending) of the examples that ``split`` selects, class by class."""
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


def _folder_source(path: str, split: str, skip_bad_images: bool) -> _Source:
  parse_folder_split(split)  # Bad split strings fail before the folder is listed.
  paths, labels, classes, others = _list_folder(os.path.abspath(os.path.expanduser(path)))
  keep = _split_indices(labels, split)
  if not keep.size:
    raise DatasetError(f"Split {split!r} selects no image of folder {path!r} "
                       f"({len(paths)} images in {max(len(classes), 1)} class(es)); "
                       f"accepted: {FOLDER_SPLIT_SYNTAX}.")
  if keep.size < len(paths):
    paths = tuple(paths[i] for i in keep)
    labels = tuple(labels[i] for i in keep)
  for other in others:
    _report_bad(other, "not an image file (extension)", skip_bad_images)
  # A lookup table instead of a graph constant: a million paths stay out of the
  # serialised tf.data functions.
  table = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(
          tf.range(len(paths), dtype=tf.int64), tf.constant(paths, tf.string)),
      default_value="")
  label_table = tf.constant(labels, tf.int32)

  def fetch(index):
    name = table.lookup(index)
    return tf.io.read_file(name), tf.gather(label_table, index), name

  return _Source(len(paths), len(classes), fetch=fetch)


def _tfds_not_prepared(name: str, split: str, err: Exception) -> DatasetError:
  return DatasetError(
      f"TFDS dataset {name!r} (split {split!r}) cannot be read: {str(err).splitlines()[0][:300]} "
      f"Prepare it with `tfds build {name.split(':')[0]}` on a machine with internet and copy "
      "the data here (set TFDS_DATA_DIR to its folder), or use --config.dataset=folder:PATH.")


def _tfds_keys(builder, image_key, label_key) -> Tuple[str, Optional[str], int]:
  """Finds the image and label features of a TFDS builder."""
  features = builder.info.features
  if image_key is None:
    images = [k for k, f in features.items() if isinstance(f, tfds.features.Image)]
    if not images:
      raise DatasetError(f"TFDS dataset {builder.name!r} has no image feature "
                         f"(features: {list(features)}).")
    image_key = "image" if "image" in images else images[0]
  if label_key is None:
    labels = [k for k, f in features.items() if isinstance(f, tfds.features.ClassLabel)]
    label_key = "label" if "label" in labels else (labels[0] if labels else None)
  num_classes = features[label_key].num_classes if label_key else 0
  return image_key, label_key, num_classes


def _tfds_source(name: str, split: str, *, data_dir=None, image_key=None, label_key=None,
                 random_access: Optional[bool] = None) -> _Source:
  """Opens a TFDS split: random access when possible, else canonical order."""
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DatasetError(f"Unknown TFDS dataset {name!r} ({str(e).splitlines()[0]}); see "
                       "https://www.tensorflow.org/datasets/catalog or use "
                       "--config.dataset=folder:PATH.") from None
  image_key, label_key, num_classes = _tfds_keys(builder, image_key, label_key)
  decoders = {image_key: tfds.decode.SkipDecoding()}
  if random_access is not False:
    try:
      source = tfds.data_source(name, split=split, data_dir=data_dir, download=False,
                                decoders=decoders)
    except (NotImplementedError, ValueError) as e:
      if random_access or "file format" not in str(e).lower():
        raise _tfds_not_prepared(name, split, e) from None
      source = None  # Stored as TFRecords: fall back to sequential reads.
    except Exception as e:  # pylint: disable=broad-except  (not prepared, bad split...)
      raise _tfds_not_prepared(name, split, e) from None
    if source is not None:
      return _tfds_random_access(source, name, split, image_key, label_key, num_classes)
  try:
    ds = tfds.load(name, split=split, data_dir=data_dir, download=False, shuffle_files=False,
                   decoders=decoders, read_config=tfds.ReadConfig(
                       shuffle_seed=0, interleave_cycle_length=1))
  except Exception as e:  # pylint: disable=broad-except
    raise _tfds_not_prepared(name, split, e) from None
  num_examples = int(ds.cardinality())
  if num_examples < 0:
    num_examples = builder.info.splits[split].num_examples

  def to_element(index, ex):
    label = tf.cast(ex[label_key], tf.int32) if label_key else tf.constant(-1, tf.int32)
    return {"bytes": ex[image_key], "label": label, "index": index,
            "name": tf.strings.format("tfds:{}/{}#{}", (name, split, index))}

  return _Source(num_examples, num_classes, sequential=ds.enumerate().map(to_element))


def _tfds_random_access(source, name, split, image_key, label_key, num_classes) -> _Source:
  def get(index):
    ex = source[int(index)]
    label = int(ex[label_key]) if label_key else -1
    return ex[image_key], np.int32(label)

  def fetch(index):
    data, label = tf.py_function(get, [index], [tf.string, tf.int32])
    data.set_shape([])
    label.set_shape([])
    return data, label, tf.strings.format("tfds:{}/{}#{}", (name, split, index))

  return _Source(len(source), num_classes, fetch=fetch)


def _open_source(dataset: str, split: str, *, skip_bad_images: bool = True,
                 **tfds_kwargs) -> _Source:
  kind, rest = _parse_dataset(dataset)
  if kind == "folder":
    return _folder_source(rest, split, skip_bad_images)
  return _tfds_source(rest, split, **tfds_kwargs)


def get_dataset_info(dataset: str, split: str, **tfds_kwargs) -> DatasetInfo:
  """Size and number of classes of a split, without reading any image.

  Args:
    dataset: 'tfds:NAME' or 'folder:PATH'.
    split: TFDS split string, or a folder split (per-class slice, see above).
    **tfds_kwargs: data_dir, image_key, label_key for TFDS.

  Returns:
    DatasetInfo(num_examples, num_classes).

  Raises:
    DatasetError: unknown name, missing/empty folder, data set not prepared.
  """
  source = _open_source(dataset, split, **tfds_kwargs)
  return DatasetInfo(source.num_examples, source.num_classes)


# --------------------------------------------------------------------------
# Decoding with bad-file handling.
# --------------------------------------------------------------------------
def _looks_decodable(data: tf.Tensor) -> tf.Tensor:
  """Cheap check that TF's decoders will accept ``data`` (magic and end markers)."""
  n = tf.strings.length(data)
  tail = lambda k: tf.strings.substr(data, tf.maximum(n - k, 0), k)  # pylint: disable=g-long-lambda
  head = lambda k: tf.strings.substr(data, 0, k)  # pylint: disable=g-long-lambda
  is_jpeg = (head(3) == b"\xff\xd8\xff") & (tail(2) == b"\xff\xd9")
  is_png = (head(8) == b"\x89PNG\r\n\x1a\n") & (tf.strings.substr(data, tf.maximum(n - 8, 0), 4)
                                                 == b"IEND")
  is_gif = (head(4) == b"GIF8") & (tail(1) == b";")
  # BMP: the header's file-size field must not exceed the bytes we have.
  bmp_head = tf.strings.join([head(6), b"\0" * 6])
  bmp_size = tf.io.decode_raw(tf.strings.substr(bmp_head, 2, 4), tf.int32, little_endian=True)[0]
  is_bmp = (head(2) == b"BM") & (tf.cast(bmp_size, tf.int32) <= n) & (n > 54)
  return (n > 0) & (is_jpeg | is_png | is_gif | is_bmp)


def _pil_decode(skip: bool):
  """Returns a numpy function decoding bytes with PIL (CMYK, palette, odd files)."""
  def decode(data, name):
    import io  # pylint: disable=g-import-not-at-top
    from PIL import Image  # pylint: disable=g-import-not-at-top
    name = name.numpy().decode("utf-8", "replace")
    try:
      with Image.open(io.BytesIO(data.numpy())) as im:
        im.seek(0)  # First frame of animations.
        arr = np.asarray(im.convert("RGB"), np.uint8)
      if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"empty image {arr.shape}")
      return arr, True
    except Exception as e:  # pylint: disable=broad-except
      reason = "empty file" if not data.numpy() else f"{type(e).__name__}: {e}"
      _report_bad(name, reason, skip)
      return np.zeros((1, 1, 3), np.uint8), False
  return decode


def decode_image(data: tf.Tensor, name: tf.Tensor, skip_bad_images: bool = True):
  """Decodes an encoded image to RGB uint8, flagging unreadable files.

  Args:
    data: scalar tf.string of file contents.
    name: scalar tf.string naming the file in reports.
    skip_bad_images: report and flag (True) or raise (False) on bad files.

  Returns:
    (uint8 [h, w, 3], bool ok). A bad file gives a 1x1 black image, ok False.
  """
  def fast():
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    return image, tf.constant(True)

  def slow():
    image, ok = tf.py_function(_pil_decode(skip_bad_images), [data, name], [tf.uint8, tf.bool])
    return tf.ensure_shape(image, [None, None, 3]), tf.ensure_shape(ok, [])

  image, ok = tf.cond(_looks_decodable(data), fast, slow)
  return tf.ensure_shape(image, [None, None, 3]), ok


# --------------------------------------------------------------------------
# Host augmentations (stateless, per example).
# --------------------------------------------------------------------------
def random_resized_crop_window(seed: tf.Tensor, height: tf.Tensor, width: tf.Tensor,
                               scale=(0.2, 1.0), ratio=CROP_RATIO, num: int = 1) -> tf.Tensor:
  """torchvision RandomResizedCrop.get_params, vectorised and stateless.

  Ten candidate boxes with area ~ U[scale] x image area and log-uniform aspect
  ratio; the first that fits wins; otherwise a centre crop with the ratio
  clamped to ``ratio`` (torchvision's fallback). ``num`` independent windows
  are drawn at once (one per view: fewer, larger TF ops per example).

  Args:
    seed: int [2] stateless seed.
    height: image height (int32 scalar).
    width: image width.
    scale: (min, max) fraction of the image area.
    ratio: (min, max) aspect ratio w/h.
    num: number of windows.

  Returns:
    int32 [num, 4]: (top, left, crop_height, crop_width) per window.
  """
  h = tf.cast(height, tf.float32)
  w = tf.cast(width, tf.float32)
  u = tf.random.stateless_uniform([4, num, CROP_ATTEMPTS], seed)
  area = h * w * (scale[0] + (scale[1] - scale[0]) * u[0])
  aspect = tf.exp(np.log(ratio[0]) + (np.log(ratio[1]) - np.log(ratio[0])) * u[1])
  cw = tf.round(tf.sqrt(area * aspect))
  ch = tf.round(tf.sqrt(area / aspect))
  fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
  first = tf.argmax(tf.cast(fits, tf.int32), axis=1, output_type=tf.int32)  # [num]
  pick = lambda x: tf.gather(x, first, axis=1, batch_dims=1)  # pylint: disable=g-long-lambda
  ch, cw = pick(ch), pick(cw)
  top = tf.floor(pick(u[2]) * (h - ch + 1))
  left = tf.floor(pick(u[3]) * (w - cw + 1))
  in_ratio = w / h
  fb_w = tf.where(in_ratio > ratio[1], tf.round(h * ratio[1]), w)
  fb_h = tf.where(in_ratio < ratio[0], tf.round(w / ratio[0]), h)
  fallback = tf.stack([tf.floor((h - fb_h) / 2), tf.floor((w - fb_w) / 2), fb_h, fb_w])
  chosen = tf.stack([top, left, ch, cw], axis=1)  # [num, 4]
  return tf.cast(tf.where(tf.reduce_any(fits, axis=1, keepdims=True), chosen, fallback),
                 tf.int32)


def _grayscale_tf(img):
  return tf.reduce_sum(img * tf.constant(augment.GRAY_WEIGHTS, img.dtype), -1, keepdims=True)


def _blend_tf(a, b, f):
  return tf.clip_by_value(f * a + (1.0 - f) * b, 0.0, 1.0)


def _gaussian_blur_tf(img, sigma, radius):
  """Separable Gaussian blur with edge replication (augment.gaussian_blur in TF).

  Each pass is one matmul with the banded matrix of ``augment.blur_matrix``
  (edge taps folded into the border columns): on a CPU host faster than
  2 * (2 radius + 1) shifted slices.
  """
  taps = tf.exp(-0.5 * tf.square(tf.range(-radius, radius + 1, dtype=tf.float32) / sigma))
  norm = tf.reduce_sum(taps)

  def blur_matrix(n):
    """[n, n]: row i holds the weights of the input pixels for output pixel i."""
    i = tf.range(n)[:, None]
    j = tf.range(n)[None, :]
    inside = (tf.abs(j - i) <= radius) & (j > 0) & (j < n - 1)
    band = tf.where(inside, tf.exp(-0.5 * tf.square(tf.cast(j - i, tf.float32) / sigma)), 0.0)
    # Taps that fall on or past an edge read the edge pixel (edge replication).
    source = i + tf.range(-radius, radius + 1)[None, :]  # [n, taps]
    left = tf.reduce_sum(tf.where(source <= 0, taps, 0.0), axis=1, keepdims=True)
    right = tf.reduce_sum(tf.where((source >= n - 1) & (source > 0), taps, 0.0), axis=1,
                          keepdims=True)
    band += tf.where(j == 0, left, 0.0) + tf.where(j == n - 1, right, 0.0)
    return band / norm

  height, width = tf.shape(img)[0], tf.shape(img)[1]
  out = tf.matmul(blur_matrix(height), tf.reshape(img, [height, -1]))  # rows
  out = tf.reshape(tf.transpose(tf.reshape(out, [height, width, 3]), [1, 0, 2]), [width, -1])
  out = tf.matmul(blur_matrix(width), out)  # columns, on the transposed image
  return tf.clip_by_value(tf.transpose(tf.reshape(out, [width, height, 3]), [1, 0, 2]), 0.0, 1.0)


def _host_color_ops(seeds, img, color_jitter, color_jitter_prob, grayscale_prob):
  """Colour jitter (random order, probability) and grayscale of one float image."""
  ranges = augment.jitter_ranges(color_jitter)
  if color_jitter_prob > 0 and any(v > 0 for v in color_jitter):
    lows = tf.constant([r[0] for r in ranges], tf.float32)
    highs = tf.constant([r[1] for r in ranges], tf.float32)
    factors = lows + (highs - lows) * tf.random.stateless_uniform([4], seeds[0])
    order = tf.argsort(tf.random.stateless_uniform([4], seeds[1]))
    ops = [
        lambda x, f: tf.clip_by_value(x * f, 0.0, 1.0),
        lambda x, f: _blend_tf(x, tf.reduce_mean(_grayscale_tf(x)), f),
        lambda x, f: _blend_tf(x, _grayscale_tf(x), f),
        # tf.image.adjust_hue shifts H in HSV by a fraction of a turn, as torchvision.
        lambda x, f: tf.clip_by_value(tf.image.adjust_hue(x, f), 0.0, 1.0),
    ]
    jittered = img
    for k in range(4):
      op_index = order[k]
      branches = [
          (lambda op=op, i=i: op(jittered, factors[i])) if color_jitter[i] > 0
          else (lambda: jittered) for i, op in enumerate(ops)
      ]
      jittered = tf.switch_case(op_index, branches)
    apply = tf.random.stateless_uniform([], seeds[2]) < color_jitter_prob
    img = tf.where(apply, jittered, img)
  if grayscale_prob > 0:
    gray = tf.broadcast_to(_grayscale_tf(img), tf.shape(img))
    img = tf.where(tf.random.stateless_uniform([], seeds[3]) < grayscale_prob, gray, img)
  return img


@functools.lru_cache(maxsize=None)
def _compiled_color_ops(color_jitter, color_jitter_prob, grayscale_prob):
  # XLA fuses the chain of element-wise ops (about 3x faster than TF's kernels at
  # 224 px on a CPU host); it compiles once per image shape.
  return tf.function(functools.partial(_host_color_ops, color_jitter=color_jitter,
                                       color_jitter_prob=color_jitter_prob,
                                       grayscale_prob=grayscale_prob), jit_compile=True)


def host_photometric_augment(seed: tf.Tensor, image: tf.Tensor, *,
                             color_jitter=(0.4, 0.4, 0.4, 0.1), color_jitter_prob=0.8,
                             grayscale_prob=0.2, blur_prob=0.0,
                             blur_sigma=(0.1, 2.0)) -> tf.Tensor:
  """The host (TensorFlow) twin of ``augment.device_photometric_augment``, one image.

  Same operations and distribution (torchvision ColorJitter in random order
  with probability ``color_jitter_prob``, grayscale, Gaussian blur), drawn
  from stateless TF random ops; the colour ops run as one XLA-compiled function.

  Args:
    seed: int [2] stateless seed.
    image: float32 [H, W, 3] in [0, 1].
    color_jitter, color_jitter_prob, grayscale_prob, blur_prob, blur_sigma: as
      in ``augment.device_photometric_augment``.

  Returns:
    float32 [H, W, 3] in [0, 1].
  """
  PhotometricOptions(color_jitter, color_jitter_prob, grayscale_prob, blur_prob,
                                    blur_sigma)
  seeds = tf.random.experimental.stateless_split(seed, 8)
  img = tf.cast(image, tf.float32)
  if grayscale_prob > 0 or (color_jitter_prob > 0 and any(v > 0 for v in color_jitter)):
    img = _compiled_color_ops(tuple(float(v) for v in color_jitter), float(color_jitter_prob),
                              float(grayscale_prob))(seeds[:4], img)
  if blur_prob > 0:
    sigma = blur_sigma[0] + (blur_sigma[1] - blur_sigma[0]) * tf.random.stateless_uniform(
        [], seeds[4])
    radius = augment.blur_kernel_radius(blur_sigma[1])
    img = tf.cond(tf.random.stateless_uniform([], seeds[5]) < blur_prob,
                  lambda: _gaussian_blur_tf(img, sigma, radius), lambda: img)
  return img


def crop_flip_views(seed: tf.Tensor, image: tf.Tensor, image_size: int, crop_scale=(0.2, 1.0),
                    num_views: int = 2) -> tf.Tensor:
  """RandomResizedCrop (bilinear; antialiased like PIL when shrinking) + flip p=0.5.

  Args:
    seed: int [2] stateless seed.
    image: uint8 [h, w, 3].
    image_size: output side.
    crop_scale: (min, max) crop area fraction.
    num_views: independent views of the image.

  Returns:
    uint8 [num_views, image_size, image_size, 3].
  """
  image = tf.convert_to_tensor(image)
  seeds = tf.random.experimental.stateless_split(seed, 2)
  shape = tf.shape(image)
  windows = random_resized_crop_window(seeds[0], shape[0], shape[1], crop_scale, num=num_views)
  flips = tf.random.stateless_uniform([num_views], seeds[1]) < 0.5
  views = []
  for v in range(num_views):
    top, left, ch, cw = tf.unstack(windows[v])
    crop = image[top:top + ch, left:left + cw]
    size = [image_size, image_size]
    # Antialiasing only matters when shrinking, and costs 4x: skip it otherwise.
    view = tf.cond((ch > image_size) | (cw > image_size),
                   lambda c=crop: tf.image.resize(c, size, antialias=True),
                   lambda c=crop: tf.image.resize(c, size))
    # Rounding to uint8 before the flip, and a cond rather than a select: on a
    # 224 px view the float select and reverse cost as much as the resize.
    view = _to_uint8(view)
    views.append(tf.cond(flips[v], lambda x=view: tf.reverse(x, axis=[1]), lambda x=view: x))
  return tf.stack(views)


def _to_uint8(x):
  return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)


# --------------------------------------------------------------------------
# Training stream.
# --------------------------------------------------------------------------
def _process_slice(global_batch_size, process_index, process_count):
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} not in [0, {process_count}).")
  if global_batch_size % process_count:
    raise ValueError(f"global_batch_size={global_batch_size} is not divisible by "
                     f"process_count={process_count}.")
  return process_index, process_count, global_batch_size // process_count


def _example_seed(seed, epoch, index):
  """Stateless per-example seed from (seed, epoch, index)."""
  base = tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)])
  return tf.random.experimental.stateless_fold_in(base, tf.cast(index, tf.int64))


def _random_access_positions(source, *, seed, start, process_index, process_count,
                             local_batch):
  """Infinite stream of {'index', 'epoch'} for this process from local position ``start``."""
  n = source.num_examples

  def locate(position):
    # Local position -> global position: this process's rows of the global batch.
    step, row = position // local_batch, position % local_batch
    position = (step * process_count + process_index) * local_batch + row
    epoch = position // n
    slot = position % n
    index = tf.random.experimental.index_shuffle(
        slot, seed=tf.stack([tf.constant(seed, tf.int64), epoch]), max_index=n - 1)
    return {"index": tf.cast(index, tf.int64), "epoch": epoch}

  return tf.data.Dataset.counter(start, dtype=tf.int64).map(locate)


def _sequential_stream(source, *, seed, start, process_index, process_count, shuffle_buffer):
  """Infinite stream of raw elements (with 'epoch') for a TFRecord-backed source."""
  n_local = source.num_examples // process_count
  shard = source.sequential.filter(lambda ex: ex["index"] % process_count == process_index)

  def epoch_ds(epoch):
    epoch_seed = tf.bitwise.bitwise_xor(tf.constant(seed, tf.int64) * 1000003, epoch)
    ds = shard.take(n_local).shuffle(min(shuffle_buffer, n_local), seed=epoch_seed,
                                     reshuffle_each_iteration=False)
    return ds.map(lambda ex: dict(ex, epoch=epoch))

  first_epoch, offset = divmod(start, n_local)
  first = epoch_ds(tf.constant(first_epoch, tf.int64)).skip(offset)
  rest = tf.data.Dataset.counter(first_epoch + 1, dtype=tf.int64).flat_map(epoch_ds)
  return first.concatenate(rest)


def _replace_bad_rows(batch):
  """Replaces rows whose image was unreadable by readable rows of the same batch."""
  ok = batch.pop("ok")
  size = tf.shape(ok)[0]
  good = tf.cast(tf.where(ok)[:, 0], tf.int32)
  num_good = tf.size(good)
  with tf.control_dependencies([tf.debugging.assert_positive(
      num_good, message="Every image of a batch was unreadable; see the warnings above.")]):
    rows = tf.range(size)
    src = tf.where(ok, rows, tf.gather(good, rows % tf.maximum(num_good, 1)))
  return {k: tf.gather(v, src) for k, v in batch.items()}


def create_pretrain_dataset(dataset: str, split: str, *, global_batch_size: int,
                            image_size: int, seed: int, crop_scale=(0.2, 1.0),
                            photometric_on_host: bool = False,
                            color_jitter=(0.4, 0.4, 0.4, 0.1), color_jitter_prob: float = 0.8,
                            grayscale_prob: float = 0.2, blur_prob: float = 0.0,
                            blur_sigma=(0.1, 2.0), start_step: int = 0,
                            process_index: Optional[int] = None,
                            process_count: Optional[int] = None,
                            skip_bad_images: bool = True, shuffle_buffer: int = 16384,
                            prefetch: int = tf.data.AUTOTUNE,
                            **tfds_kwargs) -> tf.data.Dataset:
  """Infinite per-process stream of two-view training batches.

  Args:
    dataset: 'tfds:NAME' or 'folder:PATH'.
    split: TFDS split string, or a folder split (per-class slice, see above).
    global_batch_size: batch over all processes (divisible by process_count).
    image_size: side of the square crops.
    seed: data seed; batches are a pure function of (seed, step, data).
    crop_scale: RandomResizedCrop area range (ratio is (3/4, 4/3)).
    photometric_on_host: also apply colour jitter / grayscale / blur here
      (else the train step applies ``augment.device_photometric_augment``).
    color_jitter, color_jitter_prob, grayscale_prob, blur_prob, blur_sigma: the
      photometric options (used only when photometric_on_host).
    start_step: first step to produce (exact resume).
    process_index, process_count: this process's shard; default from jax.
    skip_bad_images: skip (and report) unreadable images instead of raising.
    shuffle_buffer: shuffle buffer of the TFRecord fallback only.
    prefetch: batches prefetched on the host.
    **tfds_kwargs: data_dir, image_key, label_key, random_access for TFDS.

  Returns:
    tf.data.Dataset of {'views': uint8 [B_local, 2, S, S, 3],
    'label': int32 [B_local], 'index': int64 [B_local]}.
  """
  if not 0 < crop_scale[0] <= crop_scale[1] <= 1:
    raise ValueError(f"crop_scale={crop_scale!r} must satisfy 0 < min <= max <= 1.")
  if start_step < 0:
    raise ValueError(f"start_step={start_step} must be >= 0.")
  process_index, process_count, local_batch = _process_slice(global_batch_size, process_index,
                                                             process_count)
  photometric = dict(color_jitter=tuple(color_jitter), color_jitter_prob=color_jitter_prob,
                     grayscale_prob=grayscale_prob, blur_prob=blur_prob,
                     blur_sigma=tuple(blur_sigma))
  PhotometricOptions(**photometric)
  source = _open_source(dataset, split, skip_bad_images=skip_bad_images, **tfds_kwargs)
  if source.num_examples // process_count < local_batch:
    raise DatasetError(f"{dataset} ({source.num_examples} examples) is too small for a batch of "
                       f"{local_batch} per process on {process_count} process(es).")
  start = start_step * local_batch

  if source.fetch is not None:
    ds = _random_access_positions(source, seed=seed, start=start, process_index=process_index,
                                  process_count=process_count, local_batch=local_batch)

    def read(el):
      data, label, name = source.fetch(el["index"])
      return dict(el, bytes=data, label=label, name=name)

    ds = ds.map(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  else:
    ds = _sequential_stream(source, seed=seed, start=start, process_index=process_index,
                            process_count=process_count, shuffle_buffer=shuffle_buffer)

  def two_views(el):
    image, ok = decode_image(el["bytes"], el["name"], skip_bad_images)
    seeds = tf.random.experimental.stateless_split(
        _example_seed(seed, el["epoch"], el["index"]), 3)
    views = crop_flip_views(seeds[0], image, image_size, crop_scale)
    if photometric_on_host:
      views = _to_uint8(tf.stack([
          255.0 * host_photometric_augment(seeds[1 + v], tf.cast(views[v], tf.float32) / 255.0,
                                           **photometric)
          for v in range(2)]))
    return {"views": views, "label": el["label"], "index": el["index"], "ok": ok}

  ds = ds.map(two_views, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  if skip_bad_images:
    ds = ds.ignore_errors(log_warning=True)
  ds = ds.batch(local_batch, drop_remainder=True).map(_replace_bad_rows)
  options = tf.data.Options()
  options.deterministic = True
  options.threading.max_intra_op_parallelism = 1  # Parallelism comes from the maps.
  return ds.with_options(options).prefetch(prefetch)


# --------------------------------------------------------------------------
# Evaluation stream.
# --------------------------------------------------------------------------
def eval_transform(image: tf.Tensor, image_size: int, transform: str) -> tf.Tensor:
  """Deterministic eval transform of one uint8 image -> uint8 [S, S, 3].

  'identity' keeps the image (resized to S x S only if it differs, e.g. a
  stray size in a folder); 'resize_center_crop' is torchvision's
  Resize(S * 256 / 224) (shorter side) + CenterCrop(S).
  """
  if transform == "identity":
    shape = tf.shape(image)
    same = (shape[0] == image_size) & (shape[1] == image_size)
    resized = lambda: _to_uint8(tf.image.resize(image, [image_size, image_size],  # pylint: disable=g-long-lambda
                                                antialias=True))
    out = tf.cond(same, lambda: image, resized)
    return tf.ensure_shape(out, [image_size, image_size, 3])
  if transform != "resize_center_crop":
    raise ValueError(f"transform={transform!r} is not one of {EVAL_TRANSFORMS}.")
  resize_to = int(round(image_size * 256 / 224))
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  factor = resize_to / tf.reduce_min(shape)
  new_shape = tf.cast(tf.round(shape * factor), tf.int32)
  new_shape = tf.maximum(new_shape, image_size)
  resized = tf.image.resize(image, new_shape, method="bilinear", antialias=True)
  top = (new_shape[0] - image_size) // 2
  left = (new_shape[1] - image_size) // 2
  crop = resized[top:top + image_size, left:left + image_size]
  return tf.ensure_shape(_to_uint8(crop), [image_size, image_size, 3])


def create_eval_dataset(dataset: str, split: str, *, global_batch_size: int, image_size: int,
                        transform: str = "identity", process_index: Optional[int] = None,
                        process_count: Optional[int] = None, skip_bad_images: bool = True,
                        **tfds_kwargs) -> tf.data.Dataset:
  """Finite, ordered, per-process evaluation batches with a padding mask.

  Global batch b holds examples [b * G, (b + 1) * G) (G = global_batch_size);
  process p gets the p-th contiguous block of B_local of it, so the global
  array assembled in process order keeps the data order. The last batch is
  padded (mask False); every process yields the same number of batches.
  Unreadable images get mask False when skip_bad_images.

  Returns:
    tf.data.Dataset of {'image': uint8 [B_local, S, S, 3], 'label': int32
    [B_local], 'mask': bool [B_local]}.
  """
  if transform not in EVAL_TRANSFORMS:
    raise ValueError(f"transform={transform!r} is not one of {EVAL_TRANSFORMS}.")
  process_index, process_count, local_batch = _process_slice(global_batch_size, process_index,
                                                             process_count)
  source = _open_source(dataset, split, skip_bad_images=skip_bad_images, **tfds_kwargs)
  n = source.num_examples
  num_batches = -(-n // global_batch_size)
  block_start = process_index * local_batch

  def position(k):  # k-th element of this process -> global position.
    return (k // local_batch) * global_batch_size + block_start + k % local_batch

  if source.fetch is not None:
    def read(k):
      g = position(k)
      data, label, name = source.fetch(tf.minimum(g, n - 1))
      return {"bytes": data, "label": label, "name": name, "valid": g < n}

    ds = tf.data.Dataset.range(num_batches * local_batch).map(
        read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  else:
    mine = source.sequential.filter(
        lambda ex: (ex["index"] % global_batch_size) // local_batch == process_index)
    mine = mine.map(lambda ex: {"bytes": ex["bytes"], "label": ex["label"], "name": ex["name"],
                                "valid": tf.constant(True)})
    count = sum(1 for k in range(num_batches * local_batch) if position(k) < n)
    pad = tf.data.Dataset.from_tensors({"bytes": tf.constant(b""), "label": tf.constant(-1),
                                        "name": tf.constant("padding"),
                                        "valid": tf.constant(False)})
    ds = mine.concatenate(pad.repeat(num_batches * local_batch - count))

  def transform_fn(el):
    def real():
      image, ok = decode_image(el["bytes"], el["name"], skip_bad_images)
      return eval_transform(image, image_size, transform), ok

    def padding():
      return tf.zeros([image_size, image_size, 3], tf.uint8), tf.constant(False)

    image, ok = tf.cond(el["valid"], real, padding)
    ok = ok & el["valid"]
    return {"image": tf.where(ok, image, tf.zeros_like(image)), "label": el["label"],
            "mask": ok}

  ds = ds.map(transform_fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  options = tf.data.Options()
  options.deterministic = True
  return ds.batch(local_batch, drop_remainder=True).with_options(options).prefetch(2)
