"""Data sets by name: ``tfds:NAME`` or ``folder:PATH`` opened as a Source.

  * ``tfds:NAME`` (any TFDS image-classification data set; ``split`` is any TFDS
    split string such as ``train[:90%]``). Read through ``tfds.data_source``
    (random access; needs the array_record file format, in which
    tfds_prepare.py prepares a data set on first use). A data set stored as
    TFRecords only is refused, naming the command that converts it, unless
    sequential reads are asked for (``TfdsOptions.random_access=False``: then
    ``tfds.load`` in its canonical order; pipeline.py says what differs).
  * ``folder:PATH``: PATH/<class>/<file> or a flat folder of images, listed by
    folders.py (which also defines the folder split grammar). JPEG, PNG, BMP
    and GIF; files are read lazily and in parallel, never all loaded.

Errors name the config field that gave the data set (``field``: 'dataset',
'eval_dataset', ...), so the advice points at the flag to change.
"""
import dataclasses
import os
from typing import Callable, Optional, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from mixsiam_jax.data import DatasetError, folders
from mixsiam_jax.options import data_names


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Size and classes of one split.

  Attributes:
    num_examples: examples in the split.
    num_classes: number of labels (0 for an unlabelled folder or TFDS set).
    class_names: the label names, index = label (empty when unknown).
  """
  num_examples: int
  num_classes: int
  class_names: Tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class TfdsOptions:
  """How to read a TFDS data set (ignored for folders).

  Attributes:
    data_dir: TFDS data folder (None: TFDS_DATA_DIR or ~/tensorflow_datasets).
    image_key, label_key: feature names (None: found from the features).
    random_access: False reads sequentially (canonical order); otherwise the
      data set must be stored in a random-access format (array_record).
  """
  data_dir: Optional[str] = None
  image_key: Optional[str] = None
  label_key: Optional[str] = None
  random_access: Optional[bool] = None


@dataclasses.dataclass(frozen=True)
class Source:
  """Where examples come from.

  Exactly one of ``fetch`` (random access: int64 index -> (bytes, int32 label,
  name)) and ``sequential`` (canonical-order tf.data.Dataset of dicts with keys
  bytes, label, index, name) is set. ``non_images`` lists files of a folder
  that are not images, for the pipeline to report.
  """
  info: DatasetInfo
  fetch: Optional[Callable] = None
  sequential: Optional[tf.data.Dataset] = None
  non_images: Tuple[str, ...] = ()


def _folder_source(path: str, split: str, field: str) -> Source:
  listing = folders.list_split(os.path.abspath(os.path.expanduser(path)), split, field)
  paths, labels = listing.paths, listing.labels
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

  info = DatasetInfo(len(paths), len(listing.class_names), listing.class_names)
  return Source(info, fetch=fetch, non_images=listing.non_images)


def _tfds_not_prepared(name: str, split: str, err: Exception, field: str) -> DatasetError:
  advice = f"--config.{field}=folder:PATH"
  if field == "eval_dataset":
    advice += " (or --config.eval_dataset= for no evaluation set)"
  return DatasetError(
      f"{field}=tfds:{name} (split {split!r}) cannot be read: {str(err).splitlines()[0][:300]} "
      f"Prepare it with `python -m mixsiam_jax.data prepare tfds:{name}` (main.py does "
      f"this on first use) and set TFDS_DATA_DIR to its folder, or use {advice}.")


def tfds_builder(name: str, data_dir: Optional[str], field: str):
  """The TFDS builder of ``name`` (prepared or not).

  Args:
    name: the TFDS name, e.g. 'cifar10' or 'imagenet2012:5.1.0'.
    data_dir: TFDS data folder (None: TFDS_DATA_DIR or ~/tensorflow_datasets).
    field: the config field that gave it, named in the error.

  Returns:
    The tfds DatasetBuilder.

  Raises:
    DatasetError: TFDS knows no data set of that name.
  """
  try:
    return tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DatasetError(f"Unknown TFDS dataset {name!r} ({str(e).splitlines()[0]}); see "
                       "https://www.tensorflow.org/datasets/catalog or use "
                       f"--config.{field}=folder:PATH.") from None


def no_random_access(builder, field: str) -> DatasetError:
  """The error for a prepared TFDS data set without a random-access file format."""
  return DatasetError(
      f"{field}=tfds:{builder.name} is stored in {builder.data_dir} as "
      f"{builder.info.file_format.value}, which has no random access (needed for exact resume "
      "and for batches that do not depend on the number of processes). Set it aside and rerun: "
      f"the data set is prepared again in array_record (from the archives in "
      f"{os.path.join(builder.data_dir_root, 'downloads')} if they are still there): "
      f"mv {builder.data_dir} {builder.data_dir}.tfrecord")


def _tfds_keys(builder, image_key, label_key
               ) -> Tuple[str, Optional[str], int, Tuple[str, ...]]:
  """The image and label features of a TFDS builder, its number of classes and their names."""
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
  names = tuple(features[label_key].names) if label_key else ()
  if names == tuple(str(i) for i in range(num_classes)):
    names = ()  # TFDS's stand-in when the names are unknown (e.g. no dataset_info.json).
  return image_key, label_key, num_classes, names


def _tfds_source(name: str, split: str, tfds_options: TfdsOptions, field: str) -> Source:
  """Opens a TFDS split: random access when possible, else canonical order."""
  data_dir, random_access = tfds_options.data_dir, tfds_options.random_access
  builder = tfds_builder(name, data_dir, field)
  image_key, label_key, num_classes, names = _tfds_keys(builder, tfds_options.image_key,
                                                        tfds_options.label_key)
  decoders = {image_key: tfds.decode.SkipDecoding()}
  if random_access is not False:
    try:
      source = tfds.data_source(name, split=split, data_dir=data_dir, download=False,
                                decoders=decoders)
    except NotImplementedError:
      if not tf.io.gfile.exists(os.path.join(builder.data_dir, "dataset_info.json")):
        raise _tfds_not_prepared(name, split, FileNotFoundError(
            f"it is not prepared in {builder.data_dir_root}."), field) from None
      raise no_random_access(builder, field) from None  # prepared as TFRecords
    except Exception as e:  # pylint: disable=broad-except  (not prepared, bad split...)
      raise _tfds_not_prepared(name, split, e, field) from None
    info = DatasetInfo(len(source), num_classes, names)
    return _tfds_random_access(source, name, split, image_key, label_key, info)
  try:
    ds = tfds.load(name, split=split, data_dir=data_dir, download=False, shuffle_files=False,
                   decoders=decoders, read_config=tfds.ReadConfig(
                       shuffle_seed=0, interleave_cycle_length=1))
  except Exception as e:  # pylint: disable=broad-except
    raise _tfds_not_prepared(name, split, e, field) from None
  num_examples = int(ds.cardinality())
  if num_examples < 0:
    num_examples = builder.info.splits[split].num_examples

  def to_element(index, ex):
    label = tf.cast(ex[label_key], tf.int32) if label_key else tf.constant(-1, tf.int32)
    return {"bytes": ex[image_key], "label": label, "index": index,
            "name": tf.strings.format("tfds:{}/{}#{}", (name, split, index))}

  info = DatasetInfo(num_examples, num_classes, names)
  return Source(info, sequential=ds.enumerate().map(to_element))


def _tfds_random_access(source, name, split, image_key, label_key, info) -> Source:
  def get(index):
    ex = source[int(index)]
    label = int(ex[label_key]) if label_key else -1
    return ex[image_key], np.int32(label)

  def fetch(index):
    data, label = tf.py_function(get, [index], [tf.string, tf.int32])
    data.set_shape([])
    label.set_shape([])
    return data, label, tf.strings.format("tfds:{}/{}#{}", (name, split, index))

  return Source(info, fetch=fetch)


def open_source(dataset: str, split: str, *, field: str = "dataset",
                tfds_options: TfdsOptions = TfdsOptions()) -> Source:
  """Opens a split of a data set for reading; reads no image.

  Args:
    dataset: 'tfds:NAME' or 'folder:PATH'.
    split: TFDS split string, or a folder split (folders.py).
    field: the config field that gave ``dataset`` ('dataset', 'eval_dataset'),
      named in error messages.
    tfds_options: how to read a TFDS data set.

  Returns:
    The Source of the split (a folder is listed anew on every call).

  Raises:
    DatasetError: bad name or split, unknown TFDS name, missing or empty folder,
      data set not prepared.
  """
  kind, rest = data_names.parse_dataset(dataset, field)
  if kind == "folder":
    return _folder_source(rest, split, field)
  return _tfds_source(rest, split, tfds_options, field)


def get_dataset_info(dataset: str, split: str, *, field: str = "dataset",
                     tfds_options: TfdsOptions = TfdsOptions()) -> DatasetInfo:
  """Size and classes of a split, without reading any image (see open_source)."""
  return open_source(dataset, split, field=field, tfds_options=tfds_options).info


def check_same_classes(train: DatasetInfo, other: DatasetInfo, *, train_field: str = "dataset",
                       other_field: str = "eval_dataset") -> None:
  """Refuses two labelled data sets whose class names differ (labels would not match).

  Args:
    train, other: the two data sets' infos (e.g. the kNN bank and its queries).
    train_field, other_field: their config fields, named in the message.

  Raises:
    DatasetError: naming the first differing classes; nothing when either set
      has no class names (unlabelled, or TFDS without names).
  """
  if not train.class_names or not other.class_names or train.class_names == other.class_names:
    return
  a, b = train.class_names, other.class_names
  only_a = [c for c in a if c not in b][:5]
  only_b = [c for c in b if c not in a][:5]
  detail = (f"only in {train_field}: {only_a}, only in {other_field}: {only_b}"
            if only_a or only_b else "same names in a different order")
  raise DatasetError(f"--config.{train_field} and --config.{other_field} have different classes "
                     f"({len(a)} vs {len(b)}; {detail}); their labels would not match. Use data "
                     "sets with the same class folders.")


def read_example(source: Source, index: int) -> Tuple[tf.Tensor, tf.Tensor]:
  """The encoded bytes and the name of example ``index`` of ``source``.

  Random-access sources read just that example; a sequential TFDS source is
  scanned up to it.
  """
  if source.fetch is not None:
    data, _, name = source.fetch(tf.constant(int(index), tf.int64))
    return data, name
  el = next(iter(source.sequential.skip(int(index)).take(1)))
  return el["bytes"], el["name"]
