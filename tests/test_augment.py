"""Tests of the on-device photometric augmentations and the mixing op."""
import numpy as np
import jax
import jax.numpy as jnp
import pytest
import tensorflow as tf

from mixsiam_jax import augment, photometric
from mixsiam_jax.data import pipeline
from mixsiam_jax.options.training import PhotometricOptions


def _images(n=256, size=8, seed=0):
  rng = np.random.default_rng(seed)
  # Smooth-ish colourful images: a random colour per image plus noise.
  base = rng.uniform(0.1, 0.9, (n, 1, 1, 3))
  return np.clip(base + rng.normal(0, 0.1, (n, size, size, 3)), 0, 1).astype(np.float32)


def _options(**changes):
  """SimSiam's colour ops without blur (configs/cifar10.py's values), with ``changes``."""
  fields = dict(color_jitter=(0.4, 0.4, 0.4, 0.1), color_jitter_prob=0.8, grayscale_prob=0.2,
                blur_prob=0.0, blur_sigma=(0.1, 2.0))
  return PhotometricOptions(**{**fields, **changes})


def _photometric(rng, images, **options):
  """The device chain with _options(**options)."""
  return photometric.device_photometric_augment(rng, images, _options(**options))


def _is_gray(x):
  return np.abs(x - x[..., :1]).max(axis=(1, 2, 3)) < 1e-6


def test_output_range_dtype_and_uint8_input():
  x = (_images(16) * 255).astype(np.uint8)
  y = _photometric(jax.random.key(0), x, blur_prob=0.5)
  assert y.shape == x.shape and y.dtype == jnp.float32
  assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_identity_when_all_probabilities_zero():
  x = _images(8)
  y = _photometric(jax.random.key(0), x, color_jitter_prob=0.0,
                                         grayscale_prob=0.0, blur_prob=0.0)
  np.testing.assert_allclose(y, x, atol=1e-7)


def test_grayscale_rate_and_jitter_rate():
  x = _images(4000, size=4)
  y = np.asarray(_photometric(jax.random.key(1), x, color_jitter_prob=0.0))
  # Binomial(4000, 0.2): sd 0.0063; 5 sd tolerance.
  assert abs(_is_gray(y).mean() - 0.2) < 0.032
  y = np.asarray(_photometric(jax.random.key(2), x, grayscale_prob=0.0))
  changed = np.abs(y - x).max(axis=(1, 2, 3)) > 1e-6
  assert abs(changed.mean() - 0.8) < 0.032


def test_brightness_contrast_saturation_hue_match_definitions():
  x = jnp.asarray(_images(4))
  np.testing.assert_allclose(photometric.adjust_brightness(x, 1.3), np.clip(x * 1.3, 0, 1), atol=1e-6)
  gray = (x * jnp.asarray(photometric.GRAY_WEIGHTS)).sum(-1, keepdims=True)
  np.testing.assert_allclose(photometric.adjust_saturation(x, 0.6),
                             np.clip(0.6 * x + 0.4 * gray, 0, 1), atol=1e-6)
  mean = gray.mean(axis=(1, 2, 3), keepdims=True)
  np.testing.assert_allclose(photometric.adjust_contrast(x, 1.4),
                             np.clip(1.4 * x + (1 - 1.4) * mean, 0, 1), atol=1e-6)
  # Hue: same as TensorFlow's HSV-based adjust_hue (torchvision's definition).
  np.testing.assert_allclose(photometric.adjust_hue(x, 0.1),
                             np.clip(tf.image.adjust_hue(np.asarray(x), 0.1).numpy(), 0, 1),
                             atol=1e-5)
  np.testing.assert_allclose(photometric.adjust_hue(x, 0.0), x, atol=1e-6)


def test_jitter_factor_ranges():
  # Brightness only on a constant image: the factor is observable directly.
  x = np.full((2000, 2, 2, 3), 0.5, np.float32)
  y = np.asarray(_photometric(
      jax.random.key(3), x, color_jitter=(0.4, 0, 0, 0), color_jitter_prob=1.0,
      grayscale_prob=0.0))
  factors = y[:, 0, 0, 0] / 0.5
  assert factors.min() >= 0.6 - 1e-5 and factors.max() <= 1.4 + 1e-5
  assert abs(factors.mean() - 1.0) < 0.02  # U[0.6, 1.4]: sd of mean 0.005.


def test_blur_reduces_variance_and_kernel_radius():
  assert photometric.blur_kernel_radius(2.0) == 6  # 13 taps: 3 sigma of sigma_max.
  img = np.random.default_rng(0).uniform(size=(16, 16, 3)).astype(np.float32)
  small = photometric.gaussian_blur(jnp.asarray(img), 0.1, 6)
  big = photometric.gaussian_blur(jnp.asarray(img), 2.0, 6)
  np.testing.assert_allclose(small, img, atol=1e-4)  # sigma 0.1: essentially identity.
  assert float(jnp.std(big)) < 0.5 * float(np.std(img))
  # A constant image is unchanged (edge replication, normalised kernel).
  const = jnp.full((8, 8, 3), 0.3)
  np.testing.assert_allclose(photometric.gaussian_blur(const, 1.5, 6), const, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 4), (3, 2), (9, 31)])
@pytest.mark.parametrize("sigma", [0.3, 1.0, 2.0])
def test_blur_matches_direct_float64_convolution(shape, sigma):
  # Reference: every output pixel as an explicit 2-D sum over taps, reading
  # clipped (edge-replicated) coordinates, in float64.
  x = np.random.default_rng(2).uniform(size=shape + (3,))
  r = 6
  taps = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
  taps /= taps.sum()
  h, w = shape
  ref = np.zeros_like(x)
  for a, ta in enumerate(taps):
    for b, tb in enumerate(taps):
      ys = np.clip(np.arange(h) + a - r, 0, h - 1)
      xs = np.clip(np.arange(w) + b - r, 0, w - 1)
      ref += ta * tb * x[ys][:, xs]
  got = photometric.gaussian_blur(jnp.asarray(x, jnp.float32), sigma, r)
  np.testing.assert_allclose(np.asarray(got), np.clip(ref, 0, 1), atol=1e-6)  # float32 sums.
  np.testing.assert_allclose(np.asarray(photometric.blur_matrix(w, sigma, r)).sum(1), 1.0, rtol=1e-6)


def test_blur_sigma_range_shows_in_smoothing():
  rng = np.random.default_rng(1)
  x = rng.uniform(size=(300, 12, 12, 3)).astype(np.float32)
  y = np.asarray(_photometric(
      jax.random.key(4), x, color_jitter_prob=0.0, grayscale_prob=0.0, blur_prob=1.0,
      blur_sigma=(0.1, 2.0)))
  blur = jax.vmap(photometric.gaussian_blur, in_axes=(0, None, None))
  lo = np.asarray(blur(jnp.asarray(x), 2.0, 6)).std(axis=(1, 2, 3))
  hi = np.asarray(blur(jnp.asarray(x), 0.1, 6)).std(axis=(1, 2, 3))
  got = y.std(axis=(1, 2, 3))
  # Each blurred image lies between its own sigma=2 and sigma=0.1 versions,
  # and the sigmas spread over the range (both ends reached by some images).
  assert np.all(got >= lo - 1e-5) and np.all(got <= hi + 1e-5)
  rel = (got - lo) / (hi - lo)
  assert (rel < 0.1).mean() > 0.05 and (rel > 0.5).mean() > 0.05


def test_jittable_inside_jit_and_sharded():
  mesh = jax.make_mesh((8,), ("data",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  x = jax.device_put(jnp.asarray(_images(16)), sharding)

  @jax.jit
  def step(rng, x):
    return _photometric(rng, x, blur_prob=0.5, blur_sigma=(0.1, 1.0)).mean()

  assert np.isfinite(float(step(jax.random.key(0), x)))
  # Same result sharded or not: randomness does not depend on the layout.
  a = _photometric(jax.random.key(5), x)
  b = _photometric(jax.random.key(5), np.asarray(x))
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_per_sample_independence():
  x = np.repeat(_images(1), 64, axis=0)
  y = np.asarray(_photometric(jax.random.key(6), x))
  assert len({row.tobytes() for row in y.round(4)}) > 40


def _training_views(folder, host_photometric, size=8, batches=15):
  """The views of the first ``batches`` training batches of 100, as [N, size, size, 3] uint8."""
  options = pipeline.TrainDataOptions(dataset=f"folder:{folder}", split="train",
                                      global_batch_size=100, image_size=size, seed=3,
                                      crop_scale=(0.2, 1.0), skip_bad_images=True,
                                      host_photometric=host_photometric)
  ds = pipeline.create_pretrain_dataset(options, process_index=0, process_count=1)
  views = [b["views"] for b, _ in zip(ds.as_numpy_iterator(), range(batches))]
  return np.concatenate(views).reshape((-1, size, size, 3))


@pytest.mark.parametrize("blur_prob", [0.0, 0.5])
def test_host_and_device_same_distribution(cifar_jpeg_folder, blur_prob):
  """Host (the training stream's colour ops) and device (JAX) chains agree in distribution.

  The host chain runs where the program runs it: in create_pretrain_dataset
  with host_photometric set; the device chain gets the same crops without them.
  Statistic: per-image mean, std and channel spread after augmentation of the
  same 3000 crops. Tolerances: quantiles (10/50/90%) within 0.02 and means
  within 0.015 (Monte-Carlo noise of 3000 draws is ~0.004 on the mean).
  """
  kw = dict(blur_prob=blur_prob)
  crops = _training_views(cifar_jpeg_folder, None)
  assert crops.shape == (3000, 8, 8, 3)
  dev = np.asarray(_photometric(jax.random.key(7), crops.astype(np.float32) / 255.0, **kw))
  host = _training_views(cifar_jpeg_folder, _options(**kw)).astype(np.float32) / 255.0

  def stats(y):
    return {"mean": y.mean(axis=(1, 2, 3)), "std": y.std(axis=(1, 2, 3)),
            "spread": (y.max(-1) - y.min(-1)).mean(axis=(1, 2)),
            "gray": _is_gray(y).astype(np.float32)}

  s_dev, s_host = stats(dev), stats(host)
  for k in s_dev:
    assert abs(s_dev[k].mean() - s_host[k].mean()) < 0.015, k
    if k != "gray":
      q_dev = np.quantile(s_dev[k], [0.1, 0.5, 0.9])
      q_host = np.quantile(s_host[k], [0.1, 0.5, 0.9])
      np.testing.assert_allclose(q_dev, q_host, atol=0.02, err_msg=k)


def test_mix_views_fixed_beta_cutmix():
  # With x1 = 1 and x2 = 0 a sample's x_m holds its weight of x1.
  x1 = jnp.ones((4096, 8, 8, 3))
  x2 = jnp.zeros((4096, 8, 8, 3))
  xm = augment.mix_views(jax.random.key(0), x1[:8], x2[:8], mix_lambda=0.3)
  np.testing.assert_allclose(xm, 0.3, rtol=1e-6)
  # Beta(1, 1) is uniform: per-sample constant weights of mean 1/2 and std 1/sqrt(12),
  # within 4 standard errors of 4096 samples.
  xm = np.asarray(augment.mix_views(jax.random.key(0), x1, x2, mode="beta", alpha=1.0))
  weights = xm[:, 0, 0, 0]
  np.testing.assert_allclose(xm, np.broadcast_to(weights[:, None, None, None], xm.shape))
  assert abs(weights.mean() - 0.5) < 4 * 0.289 / 64 and abs(weights.std() - 0.289) < 0.02
  # CutMix pastes one box of x2 into x1: pixels are x1 or x2, the x2 pixels a rectangle.
  xm = np.asarray(augment.mix_views(jax.random.key(0), x1[:64], x2[:64], mode="cutmix",
                                    alpha=1.0))[..., 0]
  assert set(np.unique(xm)) <= {0.0, 1.0} and 0 < xm.mean() < 1
  for sample in xm:
    rows, cols = np.nonzero(sample == 0)
    if rows.size:
      assert rows.size == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)
  xm = augment.mix_views(jax.random.key(0), x1[:8], x2[:8], prob=0.0)
  np.testing.assert_allclose(xm, x1[:8])
  picked = augment.choose_views(jax.random.key(1), x1, x2)
  assert set(np.unique(np.asarray(picked.mean(axis=(1, 2, 3))))) <= {0.0, 1.0}
