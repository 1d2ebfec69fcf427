"""Tests of mixsiam_jax/data/decode.py: every readable format, bad files reported to a log."""
import io
import logging

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from mixsiam_jax.data import DatasetError
from mixsiam_jax.data import decode


def _encode(arr, fmt, mode=None):
  buf = io.BytesIO()
  image = Image.fromarray(arr)
  (image.convert(mode) if mode else image).save(buf, fmt)
  return buf.getvalue()


@pytest.fixture(scope="module")
def picture():
  y, x = np.mgrid[0:24, 0:20]
  return np.stack([y * 10, x * 12, (x + y) * 5], -1).astype(np.uint8)


@pytest.mark.parametrize("fmt,mode", [("PNG", None), ("PNG", "L"), ("PNG", "RGBA"),
                                      ("BMP", None), ("GIF", "P"), ("JPEG", None),
                                      ("JPEG", "CMYK")])
def test_every_format_decodes_to_rgb(picture, fmt, mode):
  log = decode.BadImageLog()
  image, ok = decode.decode_image(tf.constant(_encode(picture, fmt, mode)), tf.constant("x"), log)
  assert bool(ok) and image.dtype == tf.uint8 and image.shape == (24, 20, 3)
  if fmt in ("PNG", "BMP") and mode is None:  # Lossless: exact pixels.
    np.testing.assert_array_equal(image.numpy(), picture)
  assert not log.snapshot()


def test_bad_files_are_reported_once_per_log(picture, caplog):
  data = _encode(picture, "JPEG")
  bad = {"truncated.jpg": data[:len(data) // 2], "empty.jpg": b"", "notes.jpg": b"not an image"}
  log, other = decode.BadImageLog(), decode.BadImageLog()
  with caplog.at_level(logging.WARNING):
    for _ in range(2):
      for name, content in bad.items():
        image, ok = decode.decode_image(tf.constant(content), tf.constant(name), log)
        assert not bool(ok) and image.shape == (1, 1, 3)
  assert sorted(log.snapshot()) == sorted(bad) and log.snapshot()["empty.jpg"] == "empty file"
  assert caplog.text.count("Skipping unreadable image") == 3  # Once per file.
  assert not other.snapshot()  # Logs are independent: no process-wide registry.


def test_bad_file_raises_when_not_skipping():
  with pytest.raises(DatasetError, match="Unreadable image a/b.jpg: empty file.*skip_bad_images"):
    decode.BadImageLog().report("a/b.jpg", "empty file", skip=False)
  with pytest.raises(tf.errors.InvalidArgumentError, match="notes.jpg"):
    decode.decode_image(tf.constant(b"text"), tf.constant("notes.jpg"), decode.BadImageLog(),
                        skip=False)
