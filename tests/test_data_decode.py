"""Tests of mixsiam_jax/data/decode.py: every readable format, bad files reported to a log."""
import io
import shutil
import logging

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from mixsiam_jax.data import DatasetError, decode


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


# ---------------------------------------------------------------------------
# The program's memory of files TensorFlow's decoder failed on.
# ---------------------------------------------------------------------------
def _rotten(data: bytes, seed: int = 0) -> bytes:
  """A marker-valid rotten JPEG: its first third, random bytes, the end marker."""
  keep = len(data) // 3
  noise = np.random.default_rng(seed).integers(0, 256, len(data) - keep - 2, np.uint8)
  return data[:keep] + noise.tobytes() + b"\xff\xd9"


def _rotten_picture():
  """A rotten JPEG (of a noisy 64 px picture) that TensorFlow rejects and PIL decodes."""
  pixels = np.random.default_rng(1).integers(0, 256, (64, 64, 3), np.uint8)
  for seed in range(100):  # about one in eight is such a file
    data = _rotten(_encode(pixels, "JPEG"), seed)
    try:
      tf.io.decode_image(data, channels=3)
      continue
    except tf.errors.InvalidArgumentError:
      pass
    try:
      with Image.open(io.BytesIO(data)) as im:
        im.convert("RGB")
      return data
    except OSError:
      pass
  raise AssertionError("no rotten JPEG that only PIL reads in 100 tries")


def test_a_file_tensorflow_rejects_is_remembered_and_then_decoded_by_pil_alone():
  data, name = tf.constant(_rotten_picture()), tf.constant("rotten.jpg")
  log = decode.BadImageLog()
  with pytest.raises(tf.errors.InvalidArgumentError):
    decode.decode_image(data, name, log)  # unknown: TensorFlow's decoder, which fails
  checked, ok = decode.decode_image(data, name, log, checked=True)
  assert bool(ok) and int(log.known(name)) == log.PIL_ONLY and not log.snapshot()
  again, ok = decode.decode_image(data, name, log)  # known: PIL, no failure
  assert bool(ok)
  np.testing.assert_array_equal(again.numpy(), checked.numpy())  # the checked decode's pixels
  assert int(log.known(tf.constant("other.jpg"))) == log.FAST


def test_a_file_nothing_reads_is_remembered_and_flagged_without_decoding():
  garbage = tf.constant(b"\xff\xd8\xff" + bytes(range(256)) * 2 + b"\xff\xd9")
  log = decode.BadImageLog()
  _, ok = decode.decode_image(garbage, tf.constant("bad.jpg"), log, checked=True)
  assert not bool(ok) and int(log.known(tf.constant("bad.jpg"))) == log.UNREADABLE
  # Known: flagged before any decoder sees the bytes (these would be a readable PNG).
  png = tf.constant(_encode(np.zeros((4, 4, 3), np.uint8), "PNG"))
  image, ok = decode.decode_image(png, tf.constant("bad.jpg"), log)
  assert not bool(ok) and image.shape == (1, 1, 3)


def test_each_rotten_file_costs_one_checked_batch_in_a_whole_run(tmp_path, cifar_jpeg_folder):
  from mixsiam_jax.data import folders, iterate, pipeline  # pylint: disable=g-import-not-at-top
  root = shutil.copytree(cifar_jpeg_folder, tmp_path / "rotten")
  paths = folders.list_folder(str(root)).paths
  rotten = paths[3::20]  # 10 of 200 files
  for seed, path in enumerate(rotten):
    with open(path, "rb") as f:
      data = f.read()
    with open(path, "wb") as f:
      f.write(_rotten(data, seed))
  options = pipeline.TrainDataOptions(dataset=f"folder:{root}", split="train",
                                      global_batch_size=16, image_size=16, seed=0,
                                      crop_scale=(0.2, 1.0), skip_bad_images=True)
  checked_builds = []

  def stream(log, start=0):
    def make(step, checked):
      checked_builds.append(step) if checked else None
      return pipeline.create_pretrain_dataset(options, start_step=step, process_index=0,
                                              process_count=1, bad_images=log,
                                              checked_decoding=checked)
    return iterate.numpy_batches(make, start=start)

  epoch = len(paths) // 16
  run = stream(decode.BadImageLog())
  batches = [next(run) for _ in range(3 * epoch)]
  run.close()
  failed_in_the_first_epoch = list(checked_builds)
  assert 0 < len(failed_in_the_first_epoch) <= len(rotten)
  assert all(step < epoch + 1 for step in failed_in_the_first_epoch)  # none after it
  # A resumed run (a new program: nothing known) gives the same batches.
  checked_builds.clear()
  resumed = stream(decode.BadImageLog(), start=2 * epoch)
  for want in batches[2 * epoch:]:
    got = next(resumed)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
  resumed.close()
  assert checked_builds  # it found the rotten files again, in checked builds of its own
