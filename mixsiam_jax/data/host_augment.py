"""Host-side image ops in TensorFlow, per example and stateless.

- RandomResizedCrop + horizontal flip (crop_flip_views), as torchvision draws them;
- the TensorFlow twin of ``photometric.device_photometric_augment`` (colour jitter in
  a random order, grayscale, Gaussian blur) for runs that do them on the host;
- the deterministic evaluation transform.
Every random draw comes from a stateless seed, so a view is a pure function of
(seed, image). Options arrive validated (options.PhotometricOptions).
"""
import functools
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from mixsiam_jax import photometric
from mixsiam_jax.options.training import PhotometricOptions

# torchvision RandomResizedCrop defaults.
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
CROP_ATTEMPTS = 10


def to_uint8(x: tf.Tensor) -> tf.Tensor:
  """Rounds float pixels in [0, 255] to uint8 (clipped)."""
  return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)


def crop_uniforms(seed: tf.Tensor, num: int = 1, ratio=CROP_RATIO):
  """The random numbers of ``num`` RandomResizedCrop windows of one image.

  Args:
    seed: int [2] stateless seed.
    num: number of windows.
    ratio: (min, max) aspect ratio w/h.

  Returns:
    (u: float32 [4, num, CROP_ATTEMPTS] uniforms (area, aspect, top, left), aspect:
    float32 [num, CROP_ATTEMPTS] candidate aspect ratios) for windows_from_uniforms.
  """
  u = tf.random.stateless_uniform([4, num, CROP_ATTEMPTS], seed)
  # exp stays per image: its vectorised and scalar kernels may differ in the last bit, so a
  # batched exp could move a window by a pixel; the rest is exactly rounded arithmetic.
  aspect = tf.exp(np.log(ratio[0]) + (np.log(ratio[1]) - np.log(ratio[0])) * u[1])
  return u, aspect


def windows_from_uniforms(u: tf.Tensor, aspect: tf.Tensor, height: tf.Tensor, width: tf.Tensor,
                          scale=(0.2, 1.0), ratio=CROP_RATIO) -> tf.Tensor:
  """torchvision RandomResizedCrop.get_params from crop_uniforms's numbers, for any leading dims.

  Ten candidate boxes with area ~ U[scale] x image area and log-uniform aspect
  ratio; the first that fits wins; otherwise a centre crop with the ratio
  clamped to ``ratio`` (torchvision's fallback). The same element-wise
  arithmetic per image or over a batch of images (the pipeline's canvas path
  runs it once per batch: about 40 small ops, 0.4-0.5 ms per image on a 2-core CPU).

  Args:
    u: float32 [..., 4, num, CROP_ATTEMPTS]; aspect: float32 [..., num, CROP_ATTEMPTS].
    height, width: int32 [...]: the images' sizes.
    scale: (min, max) fraction of the image area.
    ratio: (min, max) aspect ratio w/h.

  Returns:
    int32 [..., num, 4]: (top, left, crop_height, crop_width) per window.
  """
  h = tf.cast(height, tf.float32)[..., None, None]
  w = tf.cast(width, tf.float32)[..., None, None]
  area = h * w * (scale[0] + (scale[1] - scale[0]) * u[..., 0, :, :])
  cw = tf.round(tf.sqrt(area * aspect))
  ch = tf.round(tf.sqrt(area / aspect))
  fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
  first = tf.argmax(tf.cast(fits, tf.int32), axis=-1, output_type=tf.int32)  # [..., num]
  def pick(x):  # the first fitting candidate of each window
    return tf.gather(x, first, axis=-1, batch_dims=len(first.shape))
  ch, cw = pick(ch), pick(cw)
  h, w = h[..., 0], w[..., 0]
  top = tf.floor(pick(u[..., 2, :, :]) * (h - ch + 1))
  left = tf.floor(pick(u[..., 3, :, :]) * (w - cw + 1))
  in_ratio = w / h
  fb_w = tf.where(in_ratio > ratio[1], tf.round(h * ratio[1]), w)
  fb_h = tf.where(in_ratio < ratio[0], tf.round(w / ratio[0]), h)
  fallback = tf.stack([tf.floor((h - fb_h) / 2), tf.floor((w - fb_w) / 2), fb_h, fb_w], axis=-1)
  chosen = tf.stack([top, left, ch, cw], axis=-1)  # [..., num, 4]
  return tf.cast(tf.where(tf.reduce_any(fits, axis=-1)[..., None], chosen, fallback), tf.int32)


def random_resized_crop_window(seed: tf.Tensor, height: tf.Tensor, width: tf.Tensor,
                               scale=(0.2, 1.0), ratio=CROP_RATIO, num: int = 1) -> tf.Tensor:
  """torchvision RandomResizedCrop.get_params of one image, stateless (``num`` windows).

  Args:
    seed: int [2] stateless seed.
    height, width: the image's size (int32 scalars).
    scale: (min, max) fraction of the image area.
    ratio: (min, max) aspect ratio w/h.
    num: number of windows.

  Returns:
    int32 [num, 4]: (top, left, crop_height, crop_width) per window.
  """
  u, aspect = crop_uniforms(seed, num, ratio)
  return windows_from_uniforms(u, aspect, height, width, scale, ratio)


def flip_draws(seed: tf.Tensor, num_views: int = 2):
  """The seeds of the windows and the flips of ``num_views`` views: (int [2] seed, bool [V])."""
  seeds = tf.random.experimental.stateless_split(seed, 2)
  return seeds[0], tf.random.stateless_uniform([num_views], seeds[1]) < 0.5


def crop_draws(seed: tf.Tensor, height: tf.Tensor, width: tf.Tensor, crop_scale=(0.2, 1.0),
               num_views: int = 2):
  """The crop windows and flips of ``num_views`` views of one image (crop_flip_views's draws).

  The host-resize path (crop_flip_views) draws them here; the device-resize path
  draws the same numbers (flip_draws, crop_uniforms) and finishes the windows per
  batch (windows_from_uniforms), so both crop the same windows.

  Args:
    seed: int [2] stateless seed.
    height, width: the image's size (int32 scalars).
    crop_scale: (min, max) crop area fraction.
    num_views: independent views drawn from ``seed``.

  Returns:
    (int32 [num_views, 4] windows (top, left, height, width), bool [num_views] flips).
  """
  window_seed, flips = flip_draws(seed, num_views)
  return random_resized_crop_window(window_seed, height, width, crop_scale,
                                    num=num_views), flips


def crop_flip_views(seed: tf.Tensor, image: tf.Tensor, image_size: int, crop_scale=(0.2, 1.0),
                    num_views: int = 2, keep: Optional[int] = None) -> tf.Tensor:
  """RandomResizedCrop (bilinear; antialiased like PIL when shrinking) + flip p=0.5.

  Args:
    seed: int [2] stateless seed.
    image: uint8 [h, w, 3].
    image_size: output side.
    crop_scale: (min, max) crop area fraction.
    num_views: independent views drawn from ``seed``.
    keep: render only the first ``keep`` of them (default all); the draws stay
      those of ``num_views`` views, so view 0 is the same either way.

  Returns:
    uint8 [keep or num_views, image_size, image_size, 3].
  """
  image = tf.convert_to_tensor(image)
  shape = tf.shape(image)
  windows, flips = crop_draws(seed, shape[0], shape[1], crop_scale, num_views)
  views = []
  for v in range(num_views if keep is None else keep):
    top, left, ch, cw = tf.unstack(windows[v])
    crop = image[top:top + ch, left:left + cw]
    size = [image_size, image_size]
    # Antialiasing only matters when shrinking, and costs 4x: skip it otherwise.
    view = tf.cond((ch > image_size) | (cw > image_size),
                   lambda c=crop: tf.image.resize(c, size, antialias=True),
                   lambda c=crop: tf.image.resize(c, size))
    # Rounding to uint8 before the flip, and a cond rather than a select: on a
    # 224 px view the float select and reverse cost as much as the resize.
    view = to_uint8(view)
    views.append(tf.cond(flips[v], lambda x=view: tf.reverse(x, axis=[1]), lambda x=view: x))
  return tf.stack(views)


def _grayscale(img):
  return tf.reduce_sum(img * tf.constant(photometric.GRAY_WEIGHTS, img.dtype), -1, keepdims=True)


def _blend(a, b, f):
  return tf.clip_by_value(f * a + (1.0 - f) * b, 0.0, 1.0)


def gaussian_blur(img: tf.Tensor, sigma: tf.Tensor, radius: int) -> tf.Tensor:
  """Separable Gaussian blur with edge replication (``photometric.gaussian_blur`` in TF).

  Each pass is one matmul with a banded matrix (edge taps folded into the
  border columns): on a CPU host faster than 2 * (2 radius + 1) shifted slices.

  Args:
    img: float32 [H, W, 3] in [0, 1].
    sigma: standard deviation in pixels (scalar).
    radius: the kernel's half-width.

  Returns:
    float32 [H, W, 3] in [0, 1].
  """
  taps = tf.exp(-0.5 * tf.square(tf.range(-radius, radius + 1, dtype=tf.float32) / sigma))
  norm = tf.reduce_sum(taps)

  def blur_matrix(n):
    """[n, n]: row i holds the weights of the input pixels for output pixel i."""
    i = tf.range(n)[:, None]
    j = tf.range(n)[None, :]
    inside = (tf.abs(j - i) <= radius) & (j > 0) & (j < n - 1)
    band = tf.where(inside, tf.exp(-0.5 * tf.square(tf.cast(j - i, tf.float32) / sigma)), 0.0)
    # Taps that fall on or past an edge read the edge pixel (edge replication).
    source = i + tf.range(-radius, radius + 1)[None, :]  # [n, taps]
    left = tf.reduce_sum(tf.where(source <= 0, taps, 0.0), axis=1, keepdims=True)
    right = tf.reduce_sum(tf.where((source >= n - 1) & (source > 0), taps, 0.0), axis=1,
                          keepdims=True)
    band += tf.where(j == 0, left, 0.0) + tf.where(j == n - 1, right, 0.0)
    return band / norm

  height, width = tf.shape(img)[0], tf.shape(img)[1]
  out = tf.matmul(blur_matrix(height), tf.reshape(img, [height, -1]))  # rows
  out = tf.reshape(tf.transpose(tf.reshape(out, [height, width, 3]), [1, 0, 2]), [width, -1])
  out = tf.matmul(blur_matrix(width), out)  # columns, on the transposed image
  return tf.clip_by_value(tf.transpose(tf.reshape(out, [width, height, 3]), [1, 0, 2]), 0.0, 1.0)


def _color_ops(seeds, img, options: PhotometricOptions):
  """Colour jitter (random order, probability) and grayscale of one float image."""
  color_jitter = options.color_jitter
  if options.color_jitter_prob > 0 and any(v > 0 for v in color_jitter):
    ranges = photometric.jitter_ranges(color_jitter)
    lows = tf.constant([r[0] for r in ranges], tf.float32)
    highs = tf.constant([r[1] for r in ranges], tf.float32)
    factors = lows + (highs - lows) * tf.random.stateless_uniform([4], seeds[0])
    order = tf.argsort(tf.random.stateless_uniform([4], seeds[1]))
    ops = [
        lambda x, f: tf.clip_by_value(x * f, 0.0, 1.0),
        lambda x, f: _blend(x, tf.reduce_mean(_grayscale(x)), f),
        lambda x, f: _blend(x, _grayscale(x), f),
        # tf.image.adjust_hue shifts H in HSV by a fraction of a turn, as torchvision.
        lambda x, f: tf.clip_by_value(tf.image.adjust_hue(x, f), 0.0, 1.0),
    ]
    jittered = img
    for k in range(4):
      op_index = order[k]
      branches = [
          (lambda op=op, i=i: op(jittered, factors[i])) if color_jitter[i] > 0
          else (lambda: jittered) for i, op in enumerate(ops)
      ]
      jittered = tf.switch_case(op_index, branches)
    apply = tf.random.stateless_uniform([], seeds[2]) < options.color_jitter_prob
    img = tf.where(apply, jittered, img)
  if options.grayscale_prob > 0:
    gray = tf.broadcast_to(_grayscale(img), tf.shape(img))
    img = tf.where(tf.random.stateless_uniform([], seeds[3]) < options.grayscale_prob, gray, img)
  return img


def host_photometric_fn(options: PhotometricOptions) -> Callable[[tf.Tensor, tf.Tensor],
                                                                 tf.Tensor]:
  """The host (TensorFlow) twin of ``photometric.device_photometric_augment``, one image.

  Same operations and distribution (torchvision ColorJitter in random order
  with probability ``color_jitter_prob``, grayscale, Gaussian blur), drawn
  from stateless TF random ops. Build it once per stream: the colour ops are
  one XLA-compiled function (XLA fuses the chain of element-wise ops, about 3x
  faster than TF's kernels at 224 px on a CPU host; it compiles once per shape).

  Args:
    options: the photometric options.

  Returns:
    ``fn(seed, image)``: int [2] stateless seed, float32 [H, W, 3] in [0, 1]
    -> float32 [H, W, 3] in [0, 1].
  """
  has_color = options.grayscale_prob > 0 or (
      options.color_jitter_prob > 0 and any(v > 0 for v in options.color_jitter))
  color_ops = tf.function(functools.partial(_color_ops, options=options), jit_compile=True)
  blur_sigma = options.blur_sigma
  radius = photometric.blur_kernel_radius(blur_sigma[1])

  def fn(seed, image):
    seeds = tf.random.experimental.stateless_split(seed, 8)
    img = tf.cast(image, tf.float32)
    if has_color:
      img = color_ops(seeds[:4], img)
    if options.blur_prob > 0:
      sigma = blur_sigma[0] + (blur_sigma[1] - blur_sigma[0]) * tf.random.stateless_uniform(
          [], seeds[4])
      img = tf.cond(tf.random.stateless_uniform([], seeds[5]) < options.blur_prob,
                    lambda: gaussian_blur(img, sigma, radius), lambda: img)
    return img

  return fn


def eval_transform(image: tf.Tensor, image_size: int, transform: str) -> tf.Tensor:
  """Deterministic evaluation transform of one uint8 image -> uint8 [S, S, 3].

  Args:
    image: uint8 [h, w, 3].
    image_size: output side S.
    transform: 'identity' keeps the image (resized to S x S only if it differs,
      e.g. a stray size in a folder); 'resize_center_crop' is torchvision's
      Resize(S * 256 / 224) (shorter side) + CenterCrop(S).

  Returns:
    uint8 [S, S, 3].
  """
  if transform == "identity":
    shape = tf.shape(image)
    same = (shape[0] == image_size) & (shape[1] == image_size)
    resized = lambda: to_uint8(tf.image.resize(image, [image_size, image_size],  # pylint: disable=g-long-lambda
                                               antialias=True))
    out = tf.cond(same, lambda: image, resized)
    return tf.ensure_shape(out, [image_size, image_size, 3])
  resize_to = int(round(image_size * 256 / 224))
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  factor = resize_to / tf.reduce_min(shape)
  new_shape = tf.cast(tf.round(shape * factor), tf.int32)
  new_shape = tf.maximum(new_shape, image_size)
  resized = tf.image.resize(image, new_shape, method="bilinear", antialias=True)
  top = (new_shape[0] - image_size) // 2
  left = (new_shape[1] - image_size) // 2
  crop = resized[top:top + image_size, left:left + image_size]
  return tf.ensure_shape(to_uint8(crop), [image_size, image_size, 3])
