"""SimSiam's photometric augmentations on the device: pure JAX, per sample, inside the jitted step.

Colour jitter in a random order, grayscale and Gaussian blur with torchvision's
semantics (details below), and their building blocks. Options arrive validated
(options.PhotometricOptions); nothing here checks them again.
"""
import functools
import math
from typing import Sequence, Tuple

import jax
import jax.numpy as jnp

from mixsiam_jax.options.training import PhotometricOptions

# ---------------------------------------------------------------------------
# Photometric augmentations (SimSiam/MoCo v2 recipe), pure JAX, per sample.
#
# Semantics follow torchvision's ColorJitter / RandomGrayscale on float images
# in [0, 1] (torchvision.transforms.functional on tensors):
#   brightness: x * f,                         f ~ U[max(0, 1 - b), 1 + b]
#   contrast:   f x + (1 - f) mean(gray(x)),    f ~ U[max(0, 1 - c), 1 + c]
#   saturation: f x + (1 - f) gray(x),          f ~ U[max(0, 1 - s), 1 + s]
#   hue:        H <- (H + f) mod 1 in HSV,      f ~ U[-h, h]
# in a random order per sample (torch.randperm(4)), each result clipped to
# [0, 1]; the whole jitter applied with probability p (RandomApply). Grayscale
# uses the ITU-R 601 luma weights of torchvision's tensor path and of
# tf.image.rgb_to_grayscale (0.2989, 0.587, 0.114), so host and device agree.
# Gaussian blur: the official SimSiam code calls PIL's
# ImageFilter.GaussianBlur(radius=sigma) with sigma ~ U[0.1, 2.0]; we apply a
# true separable Gaussian with standard deviation sigma, truncated at
# ceil(3 * sigma_max) pixels (13 taps for sigma_max = 2), with edge-replicating
# borders like PIL. The same algorithm in TensorFlow lives in
# data/host_augment.py.
# ---------------------------------------------------------------------------

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


def blur_kernel_radius(sigma_max: float) -> int:
  """Half-width of the Gaussian blur kernel: covers 3 sigma of the largest sigma."""
  return max(1, int(math.ceil(3.0 * sigma_max)))


def _grayscale(img: jax.Array) -> jax.Array:
  """Luma [..., H, W, 1] of an RGB image (ITU-R 601 weights)."""
  w = jnp.asarray(GRAY_WEIGHTS, img.dtype)
  return jnp.sum(img * w, axis=-1, keepdims=True)


def _rgb_to_hsv(img: jax.Array) -> jax.Array:
  """RGB in [0, 1] -> HSV in [0, 1]^3 (torchvision's _rgb2hsv)."""
  r, g, b = img[..., 0], img[..., 1], img[..., 2]
  maxc = jnp.max(img, axis=-1)
  minc = jnp.min(img, axis=-1)
  eqc = maxc == minc
  cr = maxc - minc
  ones = jnp.ones_like(maxc)
  s = cr / jnp.where(eqc, ones, maxc)
  cr_divisor = jnp.where(eqc, ones, cr)
  rc = (maxc - r) / cr_divisor
  gc = (maxc - g) / cr_divisor
  bc = (maxc - b) / cr_divisor
  hr = jnp.where(maxc == r, bc - gc, 0.0)
  hg = jnp.where((maxc == g) & (maxc != r), 2.0 + rc - bc, 0.0)
  hb = jnp.where((maxc != g) & (maxc != r), 4.0 + gc - rc, 0.0)
  h = jnp.mod((hr + hg + hb) / 6.0 + 1.0, 1.0)
  return jnp.stack([h, s, maxc], axis=-1)


def _hsv_to_rgb(img: jax.Array) -> jax.Array:
  """HSV in [0, 1]^3 -> RGB in [0, 1] (torchvision's _hsv2rgb)."""
  h, s, v = img[..., 0], img[..., 1], img[..., 2]
  i = jnp.floor(h * 6.0)
  f = h * 6.0 - i
  i = i.astype(jnp.int32) % 6
  p = jnp.clip(v * (1.0 - s), 0.0, 1.0)
  q = jnp.clip(v * (1.0 - s * f), 0.0, 1.0)
  t = jnp.clip(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)
  r = jnp.choose(i, [v, q, p, p, t, v], mode="clip")
  g = jnp.choose(i, [t, v, v, q, p, p], mode="clip")
  b = jnp.choose(i, [p, p, t, v, v, q], mode="clip")
  return jnp.stack([r, g, b], axis=-1)


def _blend(img1: jax.Array, img2: jax.Array, factor: jax.Array) -> jax.Array:
  return jnp.clip(factor * img1 + (1.0 - factor) * img2, 0.0, 1.0)


def adjust_brightness(img: jax.Array, factor: jax.Array) -> jax.Array:
  """torchvision adjust_brightness: multiply by ``factor`` and clip to [0, 1]."""
  return jnp.clip(img * factor, 0.0, 1.0)


def adjust_contrast(img: jax.Array, factor: jax.Array) -> jax.Array:
  """torchvision adjust_contrast: blend with the mean of the grayscale image."""
  mean = jnp.mean(_grayscale(img), axis=(-3, -2, -1), keepdims=True)
  return _blend(img, mean, factor)


def adjust_saturation(img: jax.Array, factor: jax.Array) -> jax.Array:
  """torchvision adjust_saturation: blend with the grayscale image."""
  return _blend(img, _grayscale(img), factor)


def adjust_hue(img: jax.Array, delta: jax.Array) -> jax.Array:
  """torchvision adjust_hue: rotate the hue by ``delta`` (fraction of a turn)."""
  hsv = _rgb_to_hsv(img)
  hsv = hsv.at[..., 0].set(jnp.mod(hsv[..., 0] + delta, 1.0))
  return jnp.clip(_hsv_to_rgb(hsv), 0.0, 1.0)


def blur_matrix(n: int, sigma: jax.Array, radius: int) -> jax.Array:
  """[n, n] Gaussian blur matrix of one axis, edge replication folded in.

  Row i holds the weights of the input pixels for output pixel i: the taps
  exp(-d^2 / (2 sigma^2)) for |d| <= radius, normalised to sum 1, with the taps
  that fall on or past a border added to that border pixel (as PIL pads).

  Args:
    n: length of the axis (static).
    sigma: scalar standard deviation in pixels.
    radius: static kernel half-width (see ``blur_kernel_radius``).

  Returns:
    float32 [n, n] whose rows sum to 1.
  """
  offsets = jnp.arange(-radius, radius + 1)
  taps = jnp.exp(-0.5 * jnp.square(offsets.astype(jnp.float32) / sigma))
  i = jnp.arange(n)[:, None]
  j = jnp.arange(n)[None, :]
  inside = (jnp.abs(j - i) <= radius) & (j > 0) & (j < n - 1)
  band = jnp.where(inside, jnp.exp(-0.5 * jnp.square((j - i).astype(jnp.float32) / sigma)), 0.0)
  source = i + offsets[None, :]  # [n, taps]: the pixel each tap reads before clipping.
  left = jnp.sum(jnp.where(source <= 0, taps, 0.0), axis=1, keepdims=True)
  right = jnp.sum(jnp.where((source >= n - 1) & (source > 0), taps, 0.0), axis=1, keepdims=True)
  band = band + jnp.where(j == 0, left, 0.0) + jnp.where(j == n - 1, right, 0.0)
  return band / jnp.sum(taps)


def gaussian_blur(img: jax.Array, sigma: jax.Array, radius: int) -> jax.Array:
  """Separable Gaussian blur of one image [H, W, C] with edge replication.

  Each pass is a matmul with a ``blur_matrix``: under vmap two batched matmuls,
  which accelerators (and XLA:CPU) run far faster than 2 (2 radius + 1) shifted
  slices.

  Args:
    img: float image [H, W, C].
    sigma: scalar standard deviation in pixels.
    radius: static kernel half-width (see ``blur_kernel_radius``).

  Returns:
    The blurred image, same shape, clipped to [0, 1].
  """
  height, width = img.shape[0], img.shape[1]
  rows = blur_matrix(height, sigma, radius).astype(img.dtype)
  cols = blur_matrix(width, sigma, radius).astype(img.dtype)
  hp = jax.lax.Precision.HIGHEST  # Full float32 sums (TPUs default to bf16 passes).
  out = jnp.einsum("hk,kwc->hwc", rows, img, precision=hp)
  out = jnp.einsum("wk,hkc->hwc", cols, out, precision=hp)
  return jnp.clip(out, 0.0, 1.0)


def jitter_ranges(color_jitter: Sequence[float]) -> Tuple[Tuple[float, float], ...]:
  """(low, high) of torchvision ColorJitter's four factors for strengths (b, c, s, h).

  Args:
    color_jitter: brightness, contrast, saturation and hue strengths.

  Returns:
    ((max(0, 1 - b), 1 + b), (max(0, 1 - c), 1 + c), (max(0, 1 - s), 1 + s), (-h, h)).
  """
  b, c, s, h = (float(v) for v in color_jitter)
  return ((max(0.0, 1 - b), 1 + b), (max(0.0, 1 - c), 1 + c),
          (max(0.0, 1 - s), 1 + s), (-h, h))


def color_jitter_one(rng: jax.Array, img: jax.Array,
                      color_jitter: Sequence[float]) -> jax.Array:
  """ColorJitter on one image: four ops in a random order, random factors.

  Brightness, contrast and saturation are all ``clip(f x + (1 - f) m)`` with
  m = 0, the mean of the grayscale image, or the grayscale image, so one blend
  with a selected factor and m applies whichever of the three sits at a
  position. Hue (an RGB->HSV->RGB round trip, the expensive op) is computed
  once: three blend slots for the positions before it (inactive from the hue's
  position on), the hue, three slots for the positions after it. That is six
  cheap blends and one hue instead of evaluating all four ops at each of the
  four positions (four hue round trips); the random draws and the composition
  are the same as before, so the distribution is unchanged.
  """
  ranges = jitter_ranges(color_jitter)
  rng_order, rng_factors = jax.random.split(rng)
  lows = jnp.asarray([r[0] for r in ranges], img.dtype)
  highs = jnp.asarray([r[1] for r in ranges], img.dtype)
  factors = jax.random.uniform(rng_factors, (4,), img.dtype, lows, highs)
  order = jax.random.permutation(rng_order, 4)

  def blend_slot(x, k, active):
    """Applies order[k] (one of brightness/contrast/saturation) if ``active``."""
    op = order[k]
    gray = _grayscale(x)
    other = jnp.where(op == 1, jnp.mean(gray, axis=(-3, -2, -1), keepdims=True),
                      jnp.where(op == 2, gray, 0.0))
    # Selects with static indices rather than gathers (explicit-sharding meshes reject
    # gathers from a replicated table with sharded indices). Strength 0 means "op
    # absent" in torchvision: such an op is the identity.
    f = jnp.where(op == 0, factors[0], jnp.where(op == 1, factors[1], factors[2]))
    enabled = functools.reduce(jnp.logical_or, [op == i for i in range(3) if color_jitter[i] > 0],
                               jnp.zeros((), bool))
    out = jnp.clip(f * x + (1.0 - f) * other, 0.0, 1.0)
    return jnp.where(jnp.logical_and(active, enabled), out, x)

  if color_jitter[3] == 0:  # no hue: four blend slots in order
    for k in range(4):
      img = blend_slot(img, k, True)
    return img
  hue_pos = jnp.argmax(order == 3)
  for k in range(3):
    img = blend_slot(img, k, k < hue_pos)
  img = adjust_hue(img, factors[3])
  for k in range(1, 4):
    img = blend_slot(img, k, k > hue_pos)
  return img


def _photometric_one(rng: jax.Array, img: jax.Array, color_jitter, color_jitter_prob,
                     grayscale_prob, blur_prob, blur_sigma) -> jax.Array:
  """The SimSiam photometric chain on one float image [H, W, 3] in [0, 1]."""
  rng_cj, rng_cj_apply, rng_gray, rng_blur, rng_sigma = jax.random.split(rng, 5)
  if color_jitter_prob > 0 and any(v > 0 for v in color_jitter):
    jittered = color_jitter_one(rng_cj, img, color_jitter)
    img = jnp.where(jax.random.bernoulli(rng_cj_apply, color_jitter_prob), jittered, img)
  if grayscale_prob > 0:
    gray = jnp.broadcast_to(_grayscale(img), img.shape)
    img = jnp.where(jax.random.bernoulli(rng_gray, grayscale_prob), gray, img)
  if blur_prob > 0:
    sigma = jax.random.uniform(rng_sigma, (), img.dtype, blur_sigma[0], blur_sigma[1])
    blurred = gaussian_blur(img, sigma, blur_kernel_radius(blur_sigma[1]))
    img = jnp.where(jax.random.bernoulli(rng_blur, blur_prob), blurred, img)
  return img


def _match_batch_sharding(rngs: jax.Array, images: jax.Array) -> jax.Array:
  """Shards the per-sample keys like the batch axis of ``images``.

  Under explicit-axis meshes vmap requires the mapped axes of all inputs to be
  sharded alike; with auto sharding this is a no-op.
  """
  try:
    sharding = jax.typeof(images).sharding
    spec = sharding.spec
  except (AttributeError, TypeError):
    return rngs
  if spec and spec[0] is not None:
    # Reshard the raw key data (resharding typed key arrays trips over the key dim).
    data = jax.random.key_data(rngs)
    data = jax.sharding.reshard(
        data, jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(spec[0])))
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(rngs))
  return rngs


@functools.partial(jax.jit, static_argnames=("options",))
def device_photometric_augment(rng: jax.Array, images: jax.Array,
                               options: PhotometricOptions) -> jax.Array:
  """SimSiam's colour jitter, grayscale and blur, independently per sample.

  Pure JAX; call it inside the jitted train step or on its own (it is jitted,
  with the options static). Works on a batch sharded along axis 0.

  Args:
    rng: PRNG key; each sample gets its own key split from it.
    images: uint8 (divided by 255) or float in [0, 1], shape [N, H, W, 3].
    options: the photometric options (colour jitter, grayscale, blur).

  Returns:
    float32 [N, H, W, 3] in [0, 1].
  """
  if images.dtype == jnp.uint8:
    images = images.astype(jnp.float32) / 255.0
  images = images.astype(jnp.float32)
  rngs = _match_batch_sharding(jax.random.split(rng, images.shape[0]), images)
  fn = functools.partial(_photometric_one, color_jitter=options.color_jitter,
                         color_jitter_prob=options.color_jitter_prob,
                         grayscale_prob=options.grayscale_prob, blur_prob=options.blur_prob,
                         blur_sigma=options.blur_sigma)
  return jax.vmap(fn)(rngs, images)
