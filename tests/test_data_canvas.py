"""Tests of mixsiam_jax/data/canvas.py: images in canvases, and those larger than the canvas."""
import logging

import jax
import numpy as np
from PIL import Image

from mixsiam_jax import device_crops
from mixsiam_jax.data import canvas, pipeline


def _smooth(height, width):
  y, x = np.mgrid[:height, :width] / max(height, width)
  return (np.stack([np.sin(5 * x + c) * np.cos(3 * y - c) for c in range(3)], -1) * 100
          + 128).astype(np.uint8)


def _stream(folder, canvas_size, log=None, seed=0):
  options = pipeline.TrainDataOptions(
      dataset=f"folder:{folder}", split="train", global_batch_size=3, image_size=16, seed=seed,
      crop_scale=(0.2, 1.0), skip_bad_images=True, canvas_size=canvas_size)
  return pipeline.create_pretrain_dataset(options, process_index=0, process_count=1,
                                          canvas_overflows=log).as_numpy_iterator()


def test_an_image_larger_than_the_canvas_is_shrunk_counted_once_and_cropped_alike(
    tmp_path, caplog):
  (tmp_path / "a").mkdir()
  Image.fromarray(_smooth(60, 80)).save(tmp_path / "a" / "big.png")
  for i in range(2):
    Image.fromarray(_smooth(20, 24 + i)).save(tmp_path / "a" / f"small{i}.png")
  log = canvas.OverflowLog(32)
  with caplog.at_level(logging.WARNING):
    batches = [b for b, _ in zip(_stream(tmp_path, 32, log), range(4))]  # 4 epochs
  assert log.count == 1
  warnings = [r.getMessage() for r in caplog.records if "larger than the canvas" in r.getMessage()]
  assert len(warnings) == 1 and "big.png (60x80)" in warnings[0] and "canvas_size=32" in warnings[0]
  host = [b for b, _ in zip(_stream(tmp_path, 0), range(4))]  # The same windows, on the host.
  for b, h in zip(batches, host):
    row = int(np.flatnonzero(b["index"] == 0)[0])  # big.png: sorted first
    assert b["canvas"][row, 24:].max() == 0  # shrunk to 24 x 32 at the top-left corner
    assert b["canvas"][row, :24].min() > 0
    top, left, height, width = b["windows"][row].T
    assert (top >= 0).all() and (top + height <= 24.001).all() and (left + width <= 32.001).all()
    views = np.asarray(jax.jit(device_crops.crop_resize_flip, static_argnums=3)(
        b["canvas"], b["windows"], b["flip"], 16))
    # Shrinking first (antialiased) and then resizing blurs these smooth images a little:
    # mean differences of 0.37-0.48 grey levels measured here.
    assert np.abs(views[row] - h["views"][row]).mean() < 1.0
    small = [r for r in range(3) if r != row]
    assert np.abs(np.round(views[small]) - h["views"][small]).max() <= 1


def test_the_log_names_the_first_few_then_every_tenfold_count(caplog):
  log = canvas.OverflowLog(64)
  with caplog.at_level(logging.WARNING):
    for i in range(120):
      log.report(f"f{i}", 100, 90)
      log.report(f"f{i}", 100, 90)  # a file seen again counts once
  assert log.count == 120
  named = [r.getMessage().split()[1] for r in caplog.records]
  assert named == ["f0", "f1", "f2", "f3", "f4", "f9", "f99"]
