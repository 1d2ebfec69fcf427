r"""Writes a grid of original / view 1 / view 2 / mixed images (MixSiam Fig. 5).

  python -m mixsiam_jax.visualize --config=configs/cifar10.py --out=grid.png \
      --config.dataset=folder:/tmp/cifar10/train --num_images=8

Rows: the original image (eval transform 'resize_center_crop' of the same
example), the two augmented views (host crop/flip + the photometric ops, on the
device or the host as configured), and the mixed view from augment.mix_views
with config.method.{mix_mode, mix_lambda, mix_alpha, mix_prob}. Mixing is done
in [0, 1] pixel space here (it is linear, so this equals mixing after
normalisation and un-normalising).
"""
from absl import app
from absl import flags
import jax
import numpy as np
from ml_collections import config_flags
from PIL import Image

from mixsiam_jax import augment
from mixsiam_jax import input_pipeline

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_OUT = flags.DEFINE_string("out", "grid.png", "PNG file to write.")
_NUM = flags.DEFINE_integer("num_images", 8, "Number of examples (columns).")
_SCALE = flags.DEFINE_integer("scale", 0, "Pixels per image side in the PNG (0: auto).")


def make_grid(rows, scale: int) -> Image.Image:
  """Tiles rows of uint8 [N, H, W, 3] images into one PIL image with 2-px gaps."""
  n, h = rows[0].shape[0], rows[0].shape[1]
  side, gap = scale or max(h, 96), 2
  grid = Image.new("RGB", (n * (side + gap) + gap, len(rows) * (side + gap) + gap), "white")
  for r, row in enumerate(rows):
    for c in range(n):
      tile = Image.fromarray(row[c]).resize((side, side), Image.NEAREST)
      grid.paste(tile, (gap + c * (side + gap), gap + r * (side + gap)))
  return grid


def main(argv):
  del argv
  config = _CONFIG.value
  n, size = _NUM.value, config.image_size
  d = config.data
  on_host = not d.photometric_on_device
  photometric = dict(color_jitter=tuple(d.color_jitter), color_jitter_prob=d.color_jitter_prob,
                     grayscale_prob=d.grayscale_prob, blur_prob=d.blur_prob,
                     blur_sigma=tuple(d.blur_sigma))
  ds = input_pipeline.create_pretrain_dataset(
      config.dataset, config.train_split, global_batch_size=n, image_size=size,
      seed=config.seed, crop_scale=tuple(d.crop_scale), photometric_on_host=on_host,
      process_index=0, process_count=1, skip_bad_images=d.skip_bad_images, **photometric)
  batch = next(ds.as_numpy_iterator())
  views = batch["views"].astype(np.float32) / 255.0
  rng = jax.random.key(config.seed)
  if not on_host:
    v = augment.device_photometric_augment(rng, views.reshape((-1,) + views.shape[2:]),
                                           **photometric)
    views = np.asarray(v).reshape(views.shape)
  m = config.method
  mixed, _ = augment.mix_views(jax.random.fold_in(rng, 1), views[:, 0], views[:, 1],
                               mode=m.mix_mode, mix_lambda=m.mix_lambda, alpha=m.mix_alpha,
                               prob=m.mix_prob)
  originals = _originals(config, batch["index"], size)
  to_u8 = lambda x: np.clip(np.round(np.asarray(x) * 255), 0, 255).astype(np.uint8)  # pylint: disable=g-long-lambda
  grid = make_grid([originals, to_u8(views[:, 0]), to_u8(views[:, 1]), to_u8(mixed)],
                   _SCALE.value)
  grid.save(_OUT.value)
  print(f"Wrote {_OUT.value}: rows original / view 1 / view 2 / mixed, {n} examples.")


def _originals(config, indices, size):
  """The un-augmented examples of ``indices`` (resize + centre crop)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  source = input_pipeline._open_source(config.dataset, config.train_split)  # pylint: disable=protected-access
  out = []
  for i in indices:
    if source.fetch is not None:  # Random access: read just these examples.
      data, _, name = source.fetch(tf.constant(int(i), tf.int64))
    else:  # TFRecord-backed TFDS: scan to the example.
      el = next(iter(source.sequential.skip(int(i)).take(1)))
      data, name = el["bytes"], el["name"]
    image, _ = input_pipeline.decode_image(data, name)
    out.append(input_pipeline.eval_transform(image, size, "resize_center_crop").numpy())
  return np.stack(out)


if __name__ == "__main__":
  app.run(main)
