"""Decoding encoded images to RGB uint8, with unreadable files reported, not fatal.

Each file's bytes get a cheap in-graph check (non-empty, known magic bytes,
JPEG/PNG/GIF end markers, a BMP size that fits). Files that pass go to
TensorFlow's decoder; files that fail it go through PIL (``tf.py_function``),
which also reads what TensorFlow cannot (CMYK JPEGs, palette images, odd
headers). Files PIL cannot read either are reported to a BadImageLog: with
``skip`` they are logged once each and flagged (the pipeline replaces or masks
them), otherwise they raise DatasetError. A file that passes the check and
still fails TensorFlow's decoder (corrupt entropy data) fails its batch; the
stream (iterate.py) then rebuilds that batch with ``checked=True``, which
decodes every file in Python and so reports that one as above.

The log also remembers, for the rest of the program, every file that TensorFlow's
decoder failed on (by name): from then on that file goes straight to PIL, or,
if PIL could not read it either, is flagged without being decoded at all. So a
rotten file costs one checked decode of its batch in a whole run, not one per
epoch, and a batch that holds only files already known never fails. Either way
it gives exactly the pixels (or the flag) the checked decode gave, so batches
stay a pure function of their position.
"""
import io
import threading
from typing import Dict, Tuple

from absl import logging
import numpy as np
from PIL import Image
import tensorflow as tf

from mixsiam_jax.data import DatasetError


class BadImageLog:
  """The unreadable images of a program, each logged once; safe across tf.data threads.

  The program creates one and passes it to every stream it builds, so a file
  that several streams read is reported once. The first NAMED_WARNINGS files
  are named on the console one by one; after that one line per tenfold count
  (100, 1000, ...) keeps a data set full of bad files from flooding it, and
  snapshot() has them all.
  """
  NAMED_WARNINGS = 20
  # What the program knows of a file (the table's values; unknown files are FAST).
  FAST, PIL_ONLY, UNREADABLE = 0, 1, 2

  def __init__(self):
    self._lock = threading.Lock()
    self._bad: Dict[str, str] = {}
    # A TensorFlow table, so the tf.data graph reads it without a Python call per file.
    self._known = tf.lookup.experimental.MutableHashTable(tf.string, tf.int32, self.FAST)
    self._remembered = 0

  def known(self, name: tf.Tensor) -> tf.Tensor:
    """How ``name`` must be decoded: FAST (unknown), PIL_ONLY or UNREADABLE (int32 scalar)."""
    return self._known.lookup(name)

  def remember(self, name: str, how: int) -> None:
    """Records how the file ``name`` decodes (PIL_ONLY or UNREADABLE), for the whole program."""
    self._known.insert(tf.constant([name]), tf.constant([how], tf.int32))
    with self._lock:
      self._remembered += 1

  def remembered(self) -> int:
    """How many times remember() was called: it grows while a stream meets new bad files."""
    with self._lock:
      return self._remembered

  def report(self, name: str, reason: str, skip: bool) -> None:
    """Records an unreadable image (a warning the first time) or raises.

    Args:
      name: the file path or example name.
      reason: why it cannot be read.
      skip: record and go on (True) or raise (False).

    Raises:
      DatasetError: naming the file and the option that skips it, if not ``skip``.
    """
    if not skip:
      raise DatasetError(f"Unreadable image {name}: {reason}. Remove it, or set "
                         "--config.data.skip_bad_images=True to skip it.")
    with self._lock:
      if name in self._bad:
        return
      self._bad[name] = reason
      count = len(self._bad)
    if count <= self.NAMED_WARNINGS:
      logging.warning("Skipping unreadable image %s (%s); %d bad image(s) so far.", name,
                      reason, count)
    elif count == 10 ** len(str(count - 1)) or count == self.NAMED_WARNINGS + 1:
      logging.warning("Skipping unreadable images: %d so far (the newest: %s, %s); only every "
                      "tenfold count is reported from here on.", count, name, reason)

  def snapshot(self) -> Dict[str, str]:
    """Returns {name: reason} of every unreadable image recorded so far."""
    with self._lock:
      return dict(self._bad)


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


def _pil_decoder(log: BadImageLog, skip: bool, tensorflow_first: bool = False):
  """Returns a numpy function decoding bytes with PIL (CMYK, palette, odd files).

  With ``tensorflow_first`` TensorFlow's decoder is tried first, so that a file
  it reads gives the same pixels as on the fast path.
  """
  def decode(data, name) -> Tuple[np.ndarray, bool]:
    name = name.numpy().decode("utf-8", "replace")
    if tensorflow_first and data.numpy():
      try:
        return tf.io.decode_image(data, channels=3, expand_animations=False).numpy(), True
      except tf.errors.InvalidArgumentError:
        # PIL reads some files TensorFlow cannot; else the file is reported below.
        log.remember(name, log.PIL_ONLY)
    try:
      with Image.open(io.BytesIO(data.numpy())) as im:
        im.seek(0)  # First frame of animations.
        arr = np.asarray(im.convert("RGB"), np.uint8)
      if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"empty image {arr.shape}")
      return arr, True
    except Exception as e:  # pylint: disable=broad-except  (any PIL failure is a bad file)
      reason = "empty file" if not data.numpy() else f"{type(e).__name__}: {e}"
      log.report(name, reason, skip)
      log.remember(name, log.UNREADABLE)
      return np.zeros((1, 1, 3), np.uint8), False
  return decode


def decode_image(data: tf.Tensor, name: tf.Tensor, log: BadImageLog,
                 skip: bool = True, checked: bool = False) -> Tuple[tf.Tensor, tf.Tensor]:
  """Decodes an encoded image to RGB uint8, flagging unreadable files.

  Args:
    data: scalar tf.string of file contents.
    name: scalar tf.string naming the file in reports.
    log: where unreadable files are reported.
    skip: report and flag (True) or raise (False) on unreadable files.
    checked: decode the files TensorFlow would decode in a tf.py_function that
      catches the decoder's errors (slower; the same pixels): for rebuilding a
      batch in which a file passed the cheap check but failed TensorFlow's
      decoder, which cannot be caught in a graph.

  Returns:
    (uint8 [h, w, 3], bool ok). An unreadable file gives a 1x1 black image, ok False.
    A file ``log`` knows is decoded the way it remembers (see the module docstring).
  """
  def fast():
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    return image, tf.constant(True)

  def python(tensorflow_first):
    image, ok = tf.py_function(_pil_decoder(log, skip, tensorflow_first), [data, name],
                               [tf.uint8, tf.bool])
    return tf.ensure_shape(image, [None, None, 3]), tf.ensure_shape(ok, [])

  def unreadable():
    return tf.zeros([1, 1, 3], tf.uint8), tf.constant(False)

  # The same routing with and without ``checked``, so both give the same pixels; checked
  # only catches TensorFlow's failure (the file then goes to PIL) instead of failing the batch.
  known = log.known(name)
  tensorflow_reads = _looks_decodable(data) & tf.equal(known, log.FAST)
  image, ok = tf.case([(tf.equal(known, log.UNREADABLE), unreadable),
                       (tensorflow_reads, (lambda: python(True)) if checked else fast)],
                      default=lambda: python(False))
  return tf.ensure_shape(image, [None, None, 3]), ok
