"""On-device image operations of the view preparation: normalisation and MixSiam's mixing.

- normalisation with the ImageNet statistics (every data set, as the official code);
- MixSiam's mixed view (mix_views: fixed weight, Beta or CutMix) and the
  "no mixture" ablation (choose_views), so x_m never travels from the host.
Pure JAX, run inside the jitted train step; images are NHWC float arrays. The
photometric augmentations are in photometric.py. Options arrive validated
(options.MethodOptions); nothing here checks them again.
"""

import jax
import jax.numpy as jnp


# ImageNet statistics used by the official SimSiam code for every data set.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

def normalize(images: jax.Array, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> jax.Array:
  """Normalises images in [0, 1] channel-wise.

  Args:
    images: float array [..., H, W, C] with values in [0, 1].
    mean: per-channel mean.
    std: per-channel standard deviation.

  Returns:
    (images - mean) / std, same shape and dtype as ``images``.
  """
  mean = jnp.asarray(mean, images.dtype)
  std = jnp.asarray(std, images.dtype)
  return (images - mean) / std


def _cutmix_mask(rng: jax.Array, keep_fraction: jax.Array, height: int,
                 width: int) -> jax.Array:
  """Per-sample boxes covering about (1 - keep_fraction) of each image.

  Returns:
    The mask [N, H, W, 1], 1 where x1 is kept.
  """
  n = keep_fraction.shape[0]
  cut_ratio = jnp.sqrt(1.0 - keep_fraction)
  cut_h = jnp.round(height * cut_ratio).astype(jnp.int32)
  cut_w = jnp.round(width * cut_ratio).astype(jnp.int32)
  rng_y, rng_x = jax.random.split(rng)
  # Box centre uniform over the image, box clipped at the border (as CutMix does).
  cy = jax.random.randint(rng_y, (n,), 0, height)
  cx = jax.random.randint(rng_x, (n,), 0, width)
  y0 = jnp.clip(cy - cut_h // 2, 0, height)[:, None]
  y1 = jnp.clip(cy + cut_h // 2, 0, height)[:, None]
  x0 = jnp.clip(cx - cut_w // 2, 0, width)[:, None]
  x1 = jnp.clip(cx + cut_w // 2, 0, width)[:, None]
  ys = jnp.arange(height)[None, :]
  xs = jnp.arange(width)[None, :]
  in_y = (ys >= y0) & (ys < y1)  # [N, H]
  in_x = (xs >= x0) & (xs < x1)  # [N, W]
  in_box = in_y[:, :, None] & in_x[:, None, :]
  return (~in_box).astype(jnp.float32)[..., None]


def mix_views(rng: jax.Array, x1: jax.Array, x2: jax.Array, *, mode: str = "fixed",
              mix_lambda: float = 0.5, alpha: float = 1.0,
              prob: float = 1.0) -> jax.Array:
  """Builds MixSiam's mixed view x_m from two views (paper Eq. 4).

  Args:
    rng: PRNG key (unused by mode='fixed' with prob=1).
    x1: first view, float [N, H, W, C] (already normalised).
    x2: second view, same shape.
    mode: 'fixed' (x_m = mix_lambda x1 + (1 - mix_lambda) x2, the paper),
      'beta' (per-sample lambda ~ Beta(alpha, alpha)), or 'cutmix' (a box of x2
      pasted into x1; box area 1 - lambda with lambda ~ Beta(alpha, alpha)).
    mix_lambda: the weight of x1 for mode='fixed'.
    alpha: Beta concentration for 'beta' and 'cutmix'.
    prob: probability that a sample is mixed at all; unmixed samples get
      x_m = x1 (weight 1).

  Returns:
    x_m, with the shape and dtype of x1.
  """
  n, height, width = x1.shape[0], x1.shape[1], x1.shape[2]
  rng_lam, rng_box, rng_prob = jax.random.split(rng, 3)
  if mode == "fixed":
    weight = jnp.full((n,), mix_lambda, jnp.float32)
  else:
    weight = jax.random.beta(rng_lam, alpha, alpha, (n,), jnp.float32)
  if prob < 1.0:
    mixed = jax.random.bernoulli(rng_prob, prob, (n,))
    weight = jnp.where(mixed, weight, 1.0)
  if mode == "cutmix":
    keep = _cutmix_mask(rng_box, weight, height, width).astype(x1.dtype)
    return keep * x1 + (1 - keep) * x2
  w = weight.astype(x1.dtype)[:, None, None, None]
  return w * x1 + (1 - w) * x2


def choose_views(rng: jax.Array, x1: jax.Array, x2: jax.Array) -> jax.Array:
  """Picks x1 or x2 per sample with probability 1/2 (the 'no mixture' ablation).

  Args:
    rng: PRNG key.
    x1: first view [N, ...].
    x2: second view, same shape.

  Returns:
    Array shaped like x1 holding, per sample, either its x1 or its x2.
  """
  pick_first = jax.random.bernoulli(rng, 0.5, (x1.shape[0],))
  pick_first = pick_first.reshape((-1,) + (1,) * (x1.ndim - 1))
  return jnp.where(pick_first, x1, x2)
