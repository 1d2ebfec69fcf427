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

from mixsiam_jax import augment, photometric
from mixsiam_jax import pretrain, program_options
from mixsiam_jax.data import decode, host_augment, pipeline, sources

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_OUT = flags.DEFINE_string("out", "grid.png", "PNG file to write.")
_NUM = flags.DEFINE_integer("num_images", 8, "Number of examples (columns).")
_SCALE = flags.DEFINE_integer("scale", 0, "Pixels per image side in the PNG (0: auto).")


def make_grid(rows, scale: int) -> Image.Image:
  """Tiles rows of uint8 [N, H, W, 3] images into one PIL image with 2-px gaps.

  Args:
    rows: equal-length uint8 image batches, one per grid row.
    scale: side of each tile in pixels (0: the image side, at least 96).

  Returns:
    The grid as an RGB PIL image.
  """
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
  pipeline.hide_accelerators_from_tensorflow()
  opts = program_options.pretrain_options(_CONFIG.value)
  n, size = _NUM.value, opts.image_size
  data = pretrain.train_data_options(opts, n)
  bad_images = decode.BadImageLog()
  ds = pipeline.create_pretrain_dataset(data, process_index=0, process_count=1,
                                        bad_images=bad_images)
  batch = next(ds.as_numpy_iterator())
  views = batch["views"].astype(np.float32) / 255.0
  rng = jax.random.key(opts.seed)
  if opts.photometric_on_device:
    v = photometric.device_photometric_augment(rng, views.reshape((-1,) + views.shape[2:]),
                                           opts.photometric)
    views = np.asarray(v).reshape(views.shape)
  m = opts.method
  mixed, _ = augment.mix_views(jax.random.fold_in(rng, 1), views[:, 0], views[:, 1],
                               mode=m.mix_mode, mix_lambda=m.mix_lambda, alpha=m.mix_alpha,
                               prob=m.mix_prob)
  source = sources.open_source(opts.data.dataset, opts.data.split)
  originals = np.stack([_original(source, i, size, bad_images) for i in batch["index"]])
  to_u8 = lambda x: np.clip(np.round(np.asarray(x) * 255), 0, 255).astype(np.uint8)  # pylint: disable=g-long-lambda
  grid = make_grid([originals, to_u8(views[:, 0]), to_u8(views[:, 1]), to_u8(mixed)],
                   _SCALE.value)
  grid.save(_OUT.value)
  print(f"Wrote {_OUT.value}: rows original / view 1 / view 2 / mixed, {n} examples.")


def _original(source: sources.Source, index: int, size: int,
              bad_images: decode.BadImageLog) -> np.ndarray:
  """The un-augmented example ``index`` of ``source`` (resize + centre crop), uint8."""
  data, name = sources.read_example(source, index)
  image, _ = decode.decode_image(data, name, bad_images)
  return host_augment.eval_transform(image, size, "resize_center_crop").numpy()


if __name__ == "__main__":
  app.run(main)
