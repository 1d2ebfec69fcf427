"""Tests of mixsiam_jax/data/host_augment.py: crops, flips, host colour ops, eval transform."""
import numpy as np
import pytest
import tensorflow as tf

from mixsiam_jax.data import host_augment as ha, pipeline
from mixsiam_jax.options.training import PhotometricOptions


def test_crop_window_area_ratio_and_bounds():
  n = 2000
  h, w = 300, 400
  windows = ha.random_resized_crop_window(tf.constant([3, 4], tf.int64), h, w, (0.2, 1.0),
                                          num=n).numpy()
  top, left, ch, cw = windows.T
  assert (top >= 0).all() and (left >= 0).all()
  assert (top + ch <= h).all() and (left + cw <= w).all()
  area = ch * cw / (h * w)
  # Rounding of the sides moves the area by at most a few pixels' worth.
  assert area.min() >= 0.2 - 0.01 and area.max() <= 1.0
  ratio = cw / ch
  assert ratio.min() >= 0.75 - 0.02 and ratio.max() <= 4 / 3 + 0.02
  # Area ~ U[0.2, 1] (before the fit check): mean about 0.6 minus rejections.
  assert 0.45 < area.mean() < 0.62


def test_crop_fallback_is_center_crop_for_extreme_aspect():
  # A 10x1000 strip: no candidate fits; torchvision falls back to a centre crop
  # with the aspect ratio clamped to 4/3.
  win = ha.random_resized_crop_window(tf.constant([1, 2], tf.int64), 10, 1000, (0.9, 1.0))[0]
  top, left, ch, cw = win.numpy()
  assert (ch, cw) == (10, 13) and top == 0 and left == (1000 - 13) // 2


def test_windows_computed_per_batch_equal_those_drawn_per_image():
  """The canvas path finishes the windows once per batch: exactly crop_draws's windows,
  fallbacks (extreme aspect ratios, 1-pixel sides) included."""
  rng = np.random.default_rng(1)
  heights, widths = rng.integers(1, 600, 300), rng.integers(1, 600, 300)
  heights[:20], widths[20:40] = 1, 3  # fallback-heavy shapes
  per_image, uniforms, aspects = [], [], []
  for k, (h, w) in enumerate(zip(heights, widths)):
    seed = tf.constant([k, 11], tf.int64)
    per_image.append(ha.crop_draws(seed, h, w, (0.08, 1.0))[0].numpy())
    u, aspect = ha.crop_uniforms(ha.flip_draws(seed)[0], num=2)
    uniforms.append(u)
    aspects.append(aspect)
  batched = ha.windows_from_uniforms(tf.stack(uniforms), tf.stack(aspects), heights, widths,
                                     (0.08, 1.0))
  np.testing.assert_array_equal(batched.numpy(), np.stack(per_image))


def test_flip_rate_and_same_eagerly_and_in_tf_data():
  image = np.tile(np.arange(16, dtype=np.uint8)[None, :, None], (16, 1, 3)) * 10
  seeds = [tf.constant([i, 5], tf.int64) for i in range(600)]
  eager = [ha.crop_flip_views(s, image, 16, (1.0, 1.0)).numpy() for s in seeds[:20]]
  ds = tf.data.Dataset.from_tensor_slices(tf.stack(seeds)).map(
      lambda s: ha.crop_flip_views(s, image, 16, (1.0, 1.0)), num_parallel_calls=4)
  graph = list(ds.as_numpy_iterator())
  for a, b in zip(eager, graph[:20]):
    np.testing.assert_array_equal(a, b)
  views = np.stack(graph)  # [600, 2, 16, 16, 3]; full-image crops, so only flips differ.
  flipped = views[:, :, 0, 0, 0] > views[:, :, 0, -1, 0]
  # Binomial(1200, 0.5): sd 0.0144; 4 sd.
  assert abs(flipped.mean() - 0.5) < 0.06


def test_crop_flip_views_match_tf_resize_and_flip():
  # Each view is tf.image.resize (antialiased when shrinking) of its window,
  # rounded to uint8, mirrored when its flip is drawn.
  image = np.random.default_rng(3).integers(0, 256, (60, 50, 3), dtype=np.uint8)
  seed = tf.constant([5, 6], tf.int64)
  views = ha.crop_flip_views(seed, image, 24).numpy()
  assert views.dtype == np.uint8 and views.shape == (2, 24, 24, 3)
  seeds = tf.random.experimental.stateless_split(seed, 2)
  windows = ha.random_resized_crop_window(seeds[0], 60, 50, (0.2, 1.0), num=2).numpy()
  flips = (tf.random.stateless_uniform([2], seeds[1]) < 0.5).numpy()
  for v, (top, left, ch, cw) in enumerate(windows):
    ref = tf.image.resize(image[top:top + ch, left:left + cw], [24, 24],
                          antialias=bool(ch > 24 or cw > 24)).numpy()
    ref = np.clip(np.round(ref), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(views[v], ref[:, ::-1] if flips[v] else ref)


def _options(**changes):
  """SimSiam's colour ops without blur (configs/cifar10.py's values), with ``changes``."""
  fields = dict(color_jitter=(0.4, 0.4, 0.4, 0.1), color_jitter_prob=0.8, grayscale_prob=0.2,
                blur_prob=0.0, blur_sigma=(0.1, 2.0))
  return PhotometricOptions(**{**fields, **changes})


def test_host_photometric_jitter_rate():
  rng = np.random.default_rng(0)
  x = rng.uniform(0.2, 0.8, (1500, 4, 4, 3)).astype(np.float32)
  fn = ha.host_photometric_fn(_options(grayscale_prob=0.0))
  ds = tf.data.Dataset.from_tensor_slices((x, tf.range(1500, dtype=tf.int64))).map(
      lambda im, i: fn(tf.stack([i, 1]), im))
  y = np.stack(list(ds.as_numpy_iterator()))
  changed = np.abs(y - x).max(axis=(1, 2, 3)) > 1e-6
  assert abs(changed.mean() - 0.8) < 0.05  # sd 0.0103.


def test_host_photometric_gray_rate_in_the_training_stream(cifar_jpeg_folder):
  # The host colour ops where the program applies them: the training stream with
  # host_photometric set, here grayscale alone, against the same crops without them.
  def views(host_photometric):
    options = pipeline.TrainDataOptions(dataset=f"folder:{cifar_jpeg_folder}", split="train",
                                        global_batch_size=100, image_size=4, seed=2,
                                        crop_scale=(0.2, 1.0), skip_bad_images=True,
                                        host_photometric=host_photometric)
    ds = pipeline.create_pretrain_dataset(options, process_index=0, process_count=1)
    return np.concatenate([b["views"] for b, _ in zip(ds.as_numpy_iterator(), range(8))])

  def is_gray(v):
    return (v == v[..., :1]).all(axis=(2, 3, 4))

  crops = views(None)
  y = views(_options(color_jitter_prob=0.0))
  assert y.shape == crops.shape == (800, 2, 4, 4, 3)
  gray = is_gray(y) & ~is_gray(crops)
  assert abs(gray[~is_gray(crops)].mean() - 0.2) < 0.05  # sd 0.01 over ~1,580 colour views.
  # The other views pass through unchanged (float and back to uint8).
  np.testing.assert_array_equal(y[~gray], crops[~gray])


def _blur_reference(x, sigma, radius):
  """float64 separable Gaussian with edge replication (np.pad mode='edge')."""
  taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
  taps /= taps.sum()
  h, w = x.shape[:2]
  pad = np.pad(x.astype(np.float64), ((radius, radius), (radius, radius), (0, 0)), mode="edge")
  rows = sum(taps[t] * pad[t:t + h] for t in range(2 * radius + 1))
  return np.clip(sum(taps[t] * rows[:, t:t + w] for t in range(2 * radius + 1)), 0, 1)


@pytest.mark.parametrize("shape", [(1, 5), (2, 3), (7, 30), (40, 33)])
@pytest.mark.parametrize("sigma", [0.1, 1.0, 2.0])
def test_host_blur_matches_float64_reference(shape, sigma):
  # The host blur builds banded matrices with the edge taps folded into the
  # border columns; edges (and images smaller than the kernel) are the risk.
  x = np.random.default_rng(7).uniform(0, 1, shape + (3,)).astype(np.float32)
  got = ha.gaussian_blur(tf.constant(x), sigma, 6).numpy()
  np.testing.assert_allclose(got, _blur_reference(x, sigma, 6), atol=1e-6)  # float32 sums.


def test_eval_transforms():
  image = np.random.default_rng(1).integers(0, 256, (40, 30, 3), dtype=np.uint8)
  same = ha.eval_transform(tf.constant(image[:16, :16]), 16, "identity").numpy()
  np.testing.assert_array_equal(same, image[:16, :16])
  assert ha.eval_transform(tf.constant(image), 16, "identity").shape == (16, 16, 3)
  # Resize the shorter side to round(14 * 256 / 224) = 16, then a centre crop of 14.
  out = ha.eval_transform(tf.constant(image), 14, "resize_center_crop").numpy()
  ref = tf.image.resize(image, [21, 16], antialias=True).numpy()[3:17, 1:15]
  np.testing.assert_array_equal(out, np.clip(np.round(ref), 0, 255).astype(np.uint8))
