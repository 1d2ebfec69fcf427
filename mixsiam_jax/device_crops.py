"""RandomResizedCrop's resize and flip on the device: views cut out of the host's canvases.

The host decodes each image once, draws the crop windows and flips (the same
draws as the host-resize path, data/host_augment.py) and sends the decoded
image in a fixed canvas (data/pipeline.py). Here, inside the jitted step, each
view is the window of its canvas resized to S x S with the filter of
``tf.image.resize(crop, [S, S], antialias=True)``: a triangle kernel whose width
grows with the downscale factor (bilinear interpolation when enlarging),
weights renormalised where the kernel leaves the window, as TensorFlow's
ScaleAndTranslate kernel does for a cropped image. Each axis is one matrix
product with an [S, canvas] weight matrix (pixels outside the window weigh 0, so
the canvas padding is never read); the flip reverses the rows of the column
weights and costs nothing. Pure JAX; windows may be fractional (an image the
host shrank to fit its canvas).
"""
import jax
import jax.numpy as jnp


def resize_weights(start: jax.Array, length: jax.Array, out_size: int, in_size: int
                   ) -> jax.Array:
  """Weights of an antialiased resize of the window [start, start + length) of one axis.

  Args:
    start: float32 [...], the window's first pixel (its left edge, in pixels).
    length: float32 [...], the window's length in pixels (> 0).
    out_size: pixels of the output axis.
    in_size: pixels of the input axis (the canvas side).

  Returns:
    float32 [..., out_size, in_size]: row i holds the weights of the input pixels
    of output pixel i; each row sums to 1 and is zero outside the window.
  """
  start = jnp.asarray(start, jnp.float32)[..., None, None]
  length = jnp.asarray(length, jnp.float32)[..., None, None]
  step = length / out_size  # input pixels per output pixel
  # Output pixel centres in input coordinates (half-pixel centres, as TensorFlow).
  sample = start + (jnp.arange(out_size, dtype=jnp.float32)[:, None] + 0.5) * step
  centre = jnp.arange(in_size, dtype=jnp.float32)[None, :] + 0.5
  # Antialiasing widens the triangle by the downscale factor; enlarging keeps width 1.
  width = jnp.maximum(step, 1.0)
  weights = jnp.maximum(0.0, 1.0 - jnp.abs(centre - sample) / width)
  inside = (centre > start) & (centre < start + length)
  weights = jnp.where(inside, weights, 0.0)
  return weights / jnp.sum(weights, axis=-1, keepdims=True)


def crop_resize_flip(canvas: jax.Array, windows: jax.Array, flip: jax.Array, size: int
                     ) -> jax.Array:
  """The views of a batch of canvases: each window resized to size x size, then flipped.

  Args:
    canvas: uint8 or float [B, C, C, 3]; each image at the canvas's top-left corner.
    windows: float32 [B, V, 4]: (top, left, height, width) of each view, in canvas pixels.
    flip: bool [B, V]: mirror the view left-right.
    size: side S of the square views.

  Returns:
    float32 [B, V, S, S, 3] in the canvas's value range ([0, 255] for uint8).
  """
  side = canvas.shape[1]
  windows = windows.astype(jnp.float32)
  rows = resize_weights(windows[..., 0], windows[..., 2], size, side)  # [B, V, S, C]
  cols = resize_weights(windows[..., 1], windows[..., 3], size, side)
  cols = jnp.where(flip[..., None, None], cols[..., ::-1, :], cols)
  # HIGH: TensorFloat-32 on GPUs (tensor cores; pixels below 2^10 are exact in it, the
  # weights' 2^-11 relative rounding moves a view by at most about 0.25 grey level), three
  # bfloat16 passes on TPUs, float32 on CPUs. A single bfloat16 pass could move pixels by
  # a grey level; HIGHEST would run these 1 GFLOP per image on a GPU's float32 cores.
  high = jax.lax.Precision.HIGH
  image = canvas.astype(jnp.float32)
  tall = jnp.einsum("bvyh,bhwc->bvywc", rows, image, precision=high)
  return jnp.einsum("bvxw,bvywc->bvyxc", cols, tall, precision=high)
