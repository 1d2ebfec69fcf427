"""Tests of mixsiam_jax/device_crops.py: the device's crop + resize + flip against TensorFlow's."""
import dataclasses

import jax
import numpy as np
import tensorflow as tf

from mixsiam_jax import device_crops
from mixsiam_jax.data import host_augment, pipeline


def _photo_like(height, width, seed=0):
  """uint8 [h, w, 3]: smooth colour gradients plus noise (edges and texture, like a photo)."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[:height, :width] / max(height, width)
  base = np.stack([np.sin(6 * x + c) * np.cos(4 * y - c) for c in range(3)], -1) * 90 + 128
  return np.clip(base + rng.normal(0, 25, (height, width, 3)), 0, 255).astype(np.uint8)


def test_weights_sum_to_one_and_vanish_outside_the_window():
  w = np.asarray(device_crops.resize_weights(np.float32(3.0), np.float32(11.0), 5, 20))
  assert w.shape == (5, 20)
  np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-6)
  assert (w[:, :3] == 0).all() and (w[:, 14:] == 0).all() and (w >= 0).all()


def test_views_match_tensorflows_antialiased_resize_of_the_crop_on_random_windows():
  """The reference is the host path's own op on the same crop (tf.image.resize, antialias
  when shrinking, bilinear otherwise), flipped by tf.reverse; |difference| < 0.02 grey levels
  (float32 round-off; 0.008 measured on 224 px views of 512 px photographs)."""
  size, height, width = 12, 37, 53
  image = _photo_like(height, width)
  canvas = np.zeros((1, 64, 64, 3), np.uint8)
  canvas[0, :height, :width] = image
  for k in range(12):  # Windows from 4 x 37 to the whole image: shrinking and enlarging.
    seed = tf.constant([k, 7], tf.int64)
    windows, flips = host_augment.crop_draws(seed, height, width, (0.02, 1.0), num_views=2)
    got = np.asarray(device_crops.crop_resize_flip(
        canvas, windows.numpy()[None].astype(np.float32), flips.numpy()[None], size))[0]
    for v, (top, left, ch, cw) in enumerate(windows.numpy()):
      crop = image[top:top + ch, left:left + cw]
      want = tf.image.resize(crop, [size, size], antialias=bool(ch > size or cw > size))
      want = tf.reverse(want, [1]) if flips[v] else want
      np.testing.assert_allclose(got[v], want.numpy(), atol=0.02, err_msg=f"seed {k} view {v}")


def test_device_views_equal_the_host_views_on_the_same_windows(cifar_jpeg_folder):
  """The training stream with canvas_size > 0 and the device part give the host path's views,
  to one grey level where rounding ties differ (0.2% of the values measured, mean 0.002)."""
  options = pipeline.TrainDataOptions(
      dataset=f"folder:{cifar_jpeg_folder}", split="train", global_batch_size=32, image_size=24,
      seed=5, crop_scale=(0.2, 1.0), skip_bad_images=True)
  host = next(pipeline.create_pretrain_dataset(options, process_index=0,
                                               process_count=1).as_numpy_iterator())
  # A canvas larger than the 32 px images: its padding must not reach the views.
  canvas = next(pipeline.create_pretrain_dataset(
      dataclasses.replace(options, canvas_size=40), process_index=0,
      process_count=1).as_numpy_iterator())
  np.testing.assert_array_equal(host["index"], canvas["index"])
  views = jax.jit(device_crops.crop_resize_flip, static_argnums=3)(
      canvas["canvas"], canvas["windows"], canvas["flip"], 24)
  diff = np.abs(np.round(np.asarray(views)) - host["views"])
  assert diff.max() <= 1.0 and diff.mean() < 0.01, (diff.max(), diff.mean())
