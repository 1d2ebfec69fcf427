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
from typing import Set, Tuple

from absl import logging
import tensorflow as tf


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


def fit_in_canvas(image: tf.Tensor, windows: tf.Tensor, name: tf.Tensor, canvas_size: int,
                  log: OverflowLog) -> Tuple[tf.Tensor, tf.Tensor]:
  """``image`` as it goes into a canvas_size x canvas_size canvas, shrunk if it is larger,
  and its crop windows in canvas pixels.

  The pipeline pads it to the canvas while batching (tf.data's padded_batch: one
  copy of each image instead of a pad and a batch: 1.6x the examples/s on
  ImageNet-like files with 512 px canvases, 2-core CPU).

  Args:
    image: uint8 [h, w, 3].
    windows: int32 [V, 4] (top, left, height, width) in image pixels.
    name: scalar tf.string naming the file in the report of a shrunk image.
    canvas_size: the canvas side C.
    log: where shrunk images are reported.

  Returns:
    (uint8 [h', w', 3] with h', w' <= C: the image itself when it fits; float32
    [V, 4] windows: the same, or scaled by the shrink factor of each axis).
  """
  shape = tf.shape(image)
  height, width = shape[0], shape[1]
  windows = tf.cast(windows, tf.float32)

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
    return shrunk, windows * tf.tile(tf.cast(new_size, tf.float32) / size, [2])

  # Only the comparison and the cond run for an image that fits (the usual case): each op
  # of this per-image function costs the host microseconds.
  placed, windows = tf.cond((height <= canvas_size) & (width <= canvas_size),
                            lambda: (image, windows), shrink)
  return tf.ensure_shape(placed, [None, None, 3]), windows
