"""The decoded image in a fixed canvas, for views that the device crops and resizes.

When the accelerator resizes the crops (device_crops.py), the host sends each
decoded image in a canvas of a fixed side C (uint8, zero padding, the image at
the top-left corner), so that a batch has one shape. An image larger than the
canvas on either side is shrunk on the host to fit (antialiased bilinear, the
aspect ratio kept), and its crop windows are scaled with it; each such file is
counted and reported once (OverflowLog). The canvas size is a config field
(data.canvas_size) chosen per recipe so that this stays rare.
"""
import threading
from typing import Dict, Set, Tuple

from absl import logging
import tensorflow as tf

from mixsiam_jax.data import host_augment


class OverflowLog:
  """The images of a program that did not fit their canvas, each counted once; thread-safe.

  The first NAMED_WARNINGS are named on the console one by one, then one line
  per tenfold count (100, 1000, ...).
  """
  NAMED_WARNINGS = 5

  def __init__(self, canvas_size: int):
    self.canvas_size = canvas_size
    self._lock = threading.Lock()
    self._names: Set[str] = set()

  def report(self, name: str, height: int, width: int) -> None:
    """Records that image ``name`` of ``height`` x ``width`` pixels was shrunk to fit."""
    with self._lock:
      if name in self._names:
        return
      self._names.add(name)
      count = len(self._names)
    if count <= self.NAMED_WARNINGS or count == 10 ** len(str(count - 1)):
      logging.warning("Image %s (%dx%d) is larger than the canvas (data.canvas_size=%d): shrunk "
                      "on the host to fit; %d such image(s) so far. A larger canvas keeps them "
                      "whole at the cost of more host memory traffic.", name, height, width,
                      self.canvas_size, count)

  @property
  def count(self) -> int:
    """The number of distinct images shrunk so far."""
    with self._lock:
      return len(self._names)


def fit_in_canvas(image: tf.Tensor, name: tf.Tensor, canvas_size: int,
                  log: OverflowLog) -> Tuple[tf.Tensor, tf.Tensor]:
  """``image`` as it goes into a canvas_size x canvas_size canvas: shrunk if it is larger.

  The pipeline pads it to the canvas while batching (tf.data's padded_batch: one
  copy of each image instead of a pad and a batch: 1.6x the examples/s on
  ImageNet-like files with 512 px canvases, 2-core CPU).

  Args:
    image: uint8 [h, w, 3].
    name: scalar tf.string naming the file in the report of a shrunk image.
    canvas_size: the canvas side C.
    log: where shrunk images are reported.

  Returns:
    (uint8 [h', w', 3] with h', w' <= C: the image itself when it fits; float32 [2]
    scale (y, x) from image to canvas pixels: 1 when it fits, else the shrink
    factor of each axis).
  """
  shape = tf.shape(image)
  height, width = shape[0], shape[1]

  def shrink():
    longer = tf.cast(tf.maximum(height, width), tf.float32)
    size = tf.cast(shape[:2], tf.float32)
    new_size = tf.clip_by_value(tf.cast(tf.round(size * (canvas_size / longer)), tf.int32), 1,
                                canvas_size)
    noted = tf.py_function(lambda n, h, w: log.report(  # pylint: disable=g-long-lambda
        n.numpy().decode("utf-8", "replace"), int(h), int(w)) or True,
                           [name, height, width], tf.bool)
    with tf.control_dependencies([noted]):
      resized = tf.image.resize(image, new_size, antialias=True)
    shrunk = tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)
    return shrunk, tf.cast(new_size, tf.float32) / size

  # Only the comparison and the cond run for an image that fits (the usual case): each op
  # of this per-image function costs the host microseconds.
  placed, scale = tf.cond((height <= canvas_size) & (width <= canvas_size),
                          lambda: (image, tf.ones([2], tf.float32)), shrink)
  return tf.ensure_shape(placed, [None, None, 3]), tf.ensure_shape(scale, [2])


def example_fields(image: tf.Tensor, name: tf.Tensor, seed: tf.Tensor, canvas_size: int,
                   log: OverflowLog, num_views: int) -> Dict[str, tf.Tensor]:
  """One example's image for its canvas and its draws (host_augment.crop_draws's numbers).

  Only the random numbers are drawn per image; ``batch`` turns them into windows
  once per batch (host_augment.windows_from_uniforms: the same windows).

  Args:
    image: uint8 [h, w, 3], decoded.
    name: its file, named if it is shrunk.
    seed: the example's int [2] crop seed (crop_draws's).
    canvas_size: the canvas side C.
    log: where shrunk images are reported.
    num_views: views kept (the draws are those of two).

  Returns:
    {'canvas', 'flip'} and the transient {'u', 'aspect', 'size', 'scale'} for ``batch``.
  """
  window_seed, flips = host_augment.flip_draws(seed, num_views=2)
  u, aspect = host_augment.crop_uniforms(window_seed, num=2)
  size = tf.shape(image)[:2]
  image, scale = fit_in_canvas(image, name, canvas_size, log)
  return {"canvas": image, "u": u, "aspect": aspect, "size": size, "scale": scale,
          "flip": flips[:num_views]}


def batch(ds: tf.data.Dataset, batch_size: int, canvas_size: int, crop_scale, num_views: int
          ) -> tf.data.Dataset:
  """Batches example_fields's elements: canvases padded to C x C, windows in canvas pixels.

  Args:
    ds: elements of example_fields plus 'label', 'index' and 'ok'.
    batch_size: rows per batch (the remainder is dropped).
    canvas_size: the canvas side C.
    crop_scale: (min, max) crop area fraction.
    num_views: views kept.

  Returns:
    Batches {'canvas', 'windows' (float32 [B, V, 4]), 'flip', 'label', 'index', 'ok'}.
  """
  def windows(rows):
    u, aspect, size, scale = (rows.pop(k) for k in ("u", "aspect", "size", "scale"))
    found = host_augment.windows_from_uniforms(u, aspect, size[:, 0], size[:, 1], crop_scale)
    found = tf.cast(found[:, :num_views], tf.float32) * tf.tile(scale, [1, 2])[:, None]
    return dict(rows, windows=found)

  # The canvas padding happens as each image is copied into its batch: one copy.
  shapes = {"canvas": [canvas_size, canvas_size, 3], "u": [4, 2, None], "aspect": [2, None],
            "size": [2], "scale": [2], "flip": [num_views], "label": [], "index": [], "ok": []}
  return ds.padded_batch(batch_size, padded_shapes=shapes, drop_remainder=True).map(windows)
