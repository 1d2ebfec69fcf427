"""The training and evaluation streams: per-process tf.data batches.

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
anything. Each example's augmentation draws from stateless TF random ops
seeded by ``fold_in((seed, e), index)``; parallel maps keep
``deterministic=True`` order. Two runs with the same seed therefore give
bit-identical batches, and ``start_step=s`` gives exactly the batches a straight
run gives from step ``s`` on.

For a TFDS data set stored as TFRecords (no random access) the epoch order is
instead a seeded ``shuffle`` (buffer ``shuffle_buffer``) of this process's
examples (``index % process_count == process_index``) in canonical order, and
``start_step`` skips the first ``offset`` examples of the current epoch
without decoding them (their bytes are still read). Still a pure function of
(seed, step), but the global batches then depend on the number of processes.

Bad images (decode.py) are, with ``skip_bad_images``, replaced in their
training batch by another example of the same batch (so batch shapes and the
position arithmetic above stay exact) or masked out of evaluation batches. A
file that passes decode.py's check and still fails TensorFlow's decoder (rare:
corrupt entropy data) fails its batch; the reader (iterate.py) builds that
batch again with ``checked_decoding``, which reports the file by name, so
positions never shift. Files that cannot be read at all fail the stream, and
the reader retries, then stops naming the file; no error is ever dropped.

Both streams check that the data set lists as ``expect`` says (the number of
examples and the class names the run started with), so a stream rebuilt after
a fault never trains on a data set that changed under the run.
"""
import dataclasses
from typing import Optional, Tuple

import jax
import tensorflow as tf

from mixsiam_jax.data import (DataChangedError, DatasetError, batch_format, canvas as canvas_lib,
                              decode, host_augment, positions, sources)
from mixsiam_jax.options import data_names
from mixsiam_jax.options.checks import OptionsError, one_of, positive_int
from mixsiam_jax.options.shared import check_crop_scale
from mixsiam_jax.options.training import PhotometricOptions


def hide_accelerators_from_tensorflow() -> None:
  """Keeps TensorFlow (which only feeds data, on the host CPUs) off the GPUs that JAX uses.

  Call it at program start, before any TensorFlow op runs; later calls do nothing.

  Raises:
    RuntimeError: if TensorFlow has already initialised its devices with a GPU visible.
  """
  if tf.config.get_visible_devices("GPU"):
    tf.config.set_visible_devices([], "GPU")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainDataOptions:
  """What the training stream reads and how it augments; checked when built.

  Attributes:
    dataset: 'tfds:NAME' or 'folder:PATH'.
    split: TFDS split string, or a folder split (folders.py).
    global_batch_size: batch over all processes.
    image_size: side of the square crops.
    seed: data seed; batches are a pure function of (seed, step, data).
    crop_scale: RandomResizedCrop area range (ratio is (3/4, 4/3)).
    num_views: augmented views per example: 2 (pretraining) or 1 (the augmented
      linear probe: the first of the same two draws, so only one is cropped).
    host_photometric: colour jitter, grayscale and blur to apply on the host;
      None when the train step applies them on the device.
    canvas_size: 0: the host crops, resizes and flips the views; C > 0: it sends each
      decoded image in a C x C canvas with the same draws of windows and flips, and the
      train step cuts the views (device_crops.py).
    skip_bad_images: skip (and report) unreadable images instead of raising.
    shuffle_buffer: shuffle buffer of the TFRecord fallback only.
    host_prefetch_batches: batches tf.data prepares ahead on the host
      (tf.data.AUTOTUNE = -1), before they are placed on the devices.
    field: the config field that gave ``dataset``, named in errors.
    tfds_options: how to read a TFDS data set.
  """
  dataset: str
  split: str
  global_batch_size: int
  image_size: int
  seed: int
  crop_scale: Tuple[float, float]
  num_views: int = 2
  host_photometric: Optional[PhotometricOptions] = None
  canvas_size: int = 0
  skip_bad_images: bool
  shuffle_buffer: int = 16384
  host_prefetch_batches: int = tf.data.AUTOTUNE
  field: str = "dataset"
  tfds_options: sources.TfdsOptions = sources.TfdsOptions()

  def __post_init__(self):
    data_names.check_split(self.dataset, self.split, self.field, "train_split")
    for name in ("global_batch_size", "image_size", "shuffle_buffer"):
      positive_int(name, getattr(self, name))
    object.__setattr__(self, "crop_scale", check_crop_scale(self.crop_scale))
    if self.num_views not in (1, 2):
      raise OptionsError(f"num_views={self.num_views!r} must be 1 or 2.")
    if self.canvas_size and (self.canvas_size < 0 or self.host_photometric is not None):
      raise OptionsError(f"canvas_size={self.canvas_size!r} must be 0 or positive, and 0 with "
                         "host_photometric (whose colour ops need the host's views).")
    prefetch = self.host_prefetch_batches
    if not (prefetch > 0 or prefetch == tf.data.AUTOTUNE):
      raise OptionsError(f"host_prefetch_batches={prefetch!r} must be positive or "
                         "tf.data.AUTOTUNE.")


def _process_slice(global_batch_size, process_index, process_count):
  if process_index is None or process_count is None:
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} not in [0, {process_count}).")
  if global_batch_size % process_count:
    raise OptionsError(f"global_batch_size={global_batch_size} is not divisible by "
                       f"process_count={process_count}.")
  return process_index, process_count, global_batch_size // process_count


def _open(dataset, split, field, tfds_options, log, skip,
          expect: Optional[sources.DatasetInfo] = None) -> sources.Source:
  """Opens a source and reports its non-image files (raising unless ``skip``).

  Raises:
    DatasetError: the source does not list as ``expect`` says (it changed).
  """
  source = sources.open_source(dataset, split, field=field, tfds_options=tfds_options)
  if expect is not None and (source.info.num_examples, source.info.class_names) != (
      expect.num_examples, expect.class_names):
    now = source.info
    raise DataChangedError(
        f"--config.{field}={dataset} (split {split!r}) changed while the run was reading it: it "
        f"now holds {now.num_examples} examples in {max(now.num_classes, 1)} class(es), the run "
        f"started with {expect.num_examples} in {max(expect.num_classes, 1)} (data.json). "
        "Restore the data and rerun the same command, or start a new run in a new --workdir.")
  for other in source.non_images:
    log.report(other, "not an image file (extension)", skip)
  return source


def _example_seed(seed, epoch, index):
  """Stateless per-example seed from (seed, epoch, index)."""
  base = tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)])
  return tf.random.experimental.stateless_fold_in(base, tf.cast(index, tf.int64))


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
  # The usual batch has no bad image: no copy (100 MB of 512 px canvases at batch 128).
  return tf.cond(tf.reduce_all(ok), lambda: batch,
                 lambda: {k: tf.gather(v, src) for k, v in batch.items()})


def _in_format(batch, spec: batch_format.BatchFormat):
  """``batch`` with the static shapes of ``spec``, whose keys and dtypes it must have already."""
  dtypes = {k: v.dtype for k, v in batch.items()}
  if dtypes != {k: tf.as_dtype(dtype) for k, (_, dtype) in spec.items()}:
    raise TypeError(f"The training batch ({dtypes}) is not in batch_format.py's format ({spec}).")
  return {k: tf.ensure_shape(v, spec[k][0]) for k, v in batch.items()}


def _views_fn(options: TrainDataOptions, log: decode.BadImageLog, checked: bool,
              overflows: Optional[canvas_lib.OverflowLog]):
  """Element {'bytes', 'name', 'epoch', 'index', 'label'} -> augmented uint8 views, or the
  canvas, windows and flips the device makes them from (options.canvas_size)."""
  photometric = (host_augment.host_photometric_fn(options.host_photometric)
                 if options.host_photometric is not None else None)

  def views_fn(el):
    image, ok = decode.decode_image(el["bytes"], el["name"], log, options.skip_bad_images,
                                    checked=checked)
    seeds = tf.random.experimental.stateless_split(
        _example_seed(options.seed, el["epoch"], el["index"]), 3)
    out = {"label": el["label"], "index": el["index"], "ok": ok}
    if options.canvas_size:
      return dict(out, **canvas_lib.example_fields(image, el["name"], seeds[0],
                                                   options.canvas_size, overflows,
                                                   options.num_views))
    views = host_augment.crop_flip_views(seeds[0], image, options.image_size, options.crop_scale,
                                         num_views=2, keep=options.num_views)
    if photometric is not None:
      views = host_augment.to_uint8(tf.stack([
          255.0 * photometric(seeds[1 + v], tf.cast(views[v], tf.float32) / 255.0)
          for v in range(options.num_views)]))
    return dict(out, views=views)

  return views_fn


def create_pretrain_dataset(options: TrainDataOptions, *, start_step: int = 0,
                            process_index: Optional[int] = None,
                            process_count: Optional[int] = None,
                            bad_images: Optional[decode.BadImageLog] = None,
                            checked_decoding: bool = False,
                            expect: Optional[sources.DatasetInfo] = None,
                            canvas_overflows: Optional[canvas_lib.OverflowLog] = None
                            ) -> tf.data.Dataset:
  """Infinite per-process stream of augmented training batches (see the module docstring).

  Args:
    options: what to read and how to augment it.
    start_step: first step to produce (exact resume).
    process_index, process_count: this process's shard; default from jax.
    bad_images: where unreadable images are reported (default: a new log).
    checked_decoding: decode every image in Python (decode.decode_image's
      ``checked``): slower, for rebuilding a batch whose decoding failed.
    expect: the size and classes the data set must still have (None: any).
    canvas_overflows: where images larger than options.canvas_size are reported
      (default: a new log).

  Returns:
    tf.data.Dataset of batches in batch_format.pretrain_batch_format(B_local,
    image_size, num_views, canvas_size): {'views': uint8 [B_local, num_views, S,
    S, 3], 'label': int32 [B_local], 'index': int64 [B_local]}, or 'canvas',
    'windows' and 'flip' in place of 'views' when options.canvas_size > 0.
  """
  if start_step < 0:
    raise ValueError(f"start_step={start_step} must be >= 0.")
  process_index, process_count, local_batch = _process_slice(options.global_batch_size,
                                                             process_index, process_count)
  log = bad_images if bad_images is not None else decode.BadImageLog()
  source = _open(options.dataset, options.split, options.field, options.tfds_options, log,
                 options.skip_bad_images, expect)
  n = source.info.num_examples
  if n // process_count < local_batch:
    raise DatasetError(f"--config.{options.field}={options.dataset} ({n} examples) is too "
                       f"small for a batch of {local_batch} per process on {process_count} "
                       "process(es); lower --config.batch_size.")
  start = start_step * local_batch
  views = _views_fn(options, log, checked_decoding,
                    canvas_overflows or canvas_lib.OverflowLog(options.canvas_size))
  if source.fetch is not None:
    locate = positions.random_access_locator(n, seed=options.seed, process_index=process_index,
                                             process_count=process_count, local_batch=local_batch)

    def example(position):  # one map: each tf.data stage costs every example microseconds
      el = locate(position)
      data, label, name = source.fetch(el["index"])
      return views(dict(el, bytes=data, label=label, name=name))

    ds = tf.data.Dataset.counter(start, dtype=tf.int64).map(
        example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  else:
    ds = positions.sequential_stream(
        source, seed=options.seed, start=start, process_index=process_index,
        process_count=process_count, shuffle_buffer=options.shuffle_buffer).map(
            views, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  spec = batch_format.pretrain_batch_format(local_batch, options.image_size, options.num_views,
                                            options.canvas_size)
  if options.canvas_size:
    ds = canvas_lib.batch(ds, local_batch, options.canvas_size, options.crop_scale,
                          options.num_views)
  else:
    ds = ds.batch(local_batch, drop_remainder=True)
  ds = ds.map(lambda batch: _in_format(_replace_bad_rows(batch), spec))
  tf_options = tf.data.Options()
  tf_options.deterministic = True
  tf_options.threading.max_intra_op_parallelism = 1  # Parallelism comes from the maps.
  return ds.with_options(tf_options).prefetch(options.host_prefetch_batches)


def create_eval_dataset(dataset: str, split: str, *, global_batch_size: int, image_size: int,
                        transform: str = "identity", process_index: Optional[int] = None,
                        process_count: Optional[int] = None, skip_bad_images: bool = True,
                        field: str = "dataset",
                        tfds_options: sources.TfdsOptions = sources.TfdsOptions(),
                        bad_images: Optional[decode.BadImageLog] = None, start_batch: int = 0,
                        checked_decoding: bool = False,
                        expect: Optional[sources.DatasetInfo] = None) -> tf.data.Dataset:
  """Finite, ordered, per-process evaluation batches with a padding mask.

  Global batch b holds examples [b * G, (b + 1) * G) (G = global_batch_size);
  process p gets the p-th contiguous block of B_local of it, so the global
  array assembled in process order keeps the data order. The last batch is
  padded (mask False); every process yields the same number of batches.
  Unreadable images get mask False when skip_bad_images.

  Args:
    dataset, split: the data set and split (as in sources.open_source).
    global_batch_size: batch over all processes.
    image_size: output side.
    transform: one of data_names.EVAL_TRANSFORMS.
    process_index, process_count: this process's shard; default from jax.
    skip_bad_images: mask (and report) unreadable images instead of raising.
    field: the config field that gave ``dataset``, named in errors.
    tfds_options: how to read a TFDS data set.
    bad_images: where unreadable images are reported (default: a new log).
    start_batch: the first batch to produce (a stream rebuilt after a fault).
    checked_decoding, expect: as in create_pretrain_dataset.

  Returns:
    tf.data.Dataset of {'image': uint8 [B_local, S, S, 3], 'label': int32
    [B_local], 'mask': bool [B_local]}.
  """
  one_of("data.eval_transform", transform, data_names.EVAL_TRANSFORMS)
  process_index, process_count, local_batch = _process_slice(global_batch_size, process_index,
                                                             process_count)
  log = bad_images if bad_images is not None else decode.BadImageLog()
  source = _open(dataset, split, field, tfds_options, log, skip_bad_images, expect)
  ds = positions.eval_elements(source, global_batch_size=global_batch_size,
                               local_batch=local_batch, process_index=process_index,
                               start_batch=start_batch)

  def transform_fn(el):
    def real():
      image, ok = decode.decode_image(el["bytes"], el["name"], log, skip_bad_images,
                                      checked=checked_decoding)
      return host_augment.eval_transform(image, image_size, transform), ok

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
