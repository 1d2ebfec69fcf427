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
import os

from absl import app
from absl import flags
import numpy as np
from ml_collections import config_flags
from PIL import Image

# Light modules only: flags parse (and --help answers) before TensorFlow and JAX load,
# and cli.run_tool loads them with their start-up notices dropped.
from mixsiam_jax.errors import UserError
from mixsiam_jax.run import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_OUT = flags.DEFINE_string("out", "grid.png", "PNG file to write.")
_NUM = flags.DEFINE_integer("num_images", 8, "Number of examples (columns).")
_SCALE = flags.DEFINE_integer("scale", 0, "Pixels per image side in the PNG (0: auto).")
flags.mark_flags_as_required(["config"])


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


def write_grid(config, out: str, num_images: int, scale: int) -> str:
  """Draws ``num_images`` examples of the training stream of ``config`` and saves the grid.

  Args:
    config: a pretraining config (configs/*.py).
    out: the PNG file to write.
    num_images: examples (columns).
    scale: side of each tile in pixels (0: auto).

  Returns:
    ``out``.

  Raises:
    UserError: a missing output folder, a bad config value or an unreadable data set
      (DatasetError).
  """
  folder = os.path.dirname(os.path.abspath(out))
  if not os.path.isdir(folder):  # Checked before the data is read and the views drawn.
    raise UserError(f"--out={out}: the folder {folder} does not exist; create it or write "
                    "elsewhere.")
  # Loaded here, after cli.run_tool has imported TensorFlow and started JAX quietly.
  # pylint: disable=g-import-not-at-top
  import jax
  from mixsiam_jax import augment, photometric, pretrain
  from mixsiam_jax.options import programs
  from mixsiam_jax.data import decode, pipeline, sources, tfds_prepare
  # pylint: enable=g-import-not-at-top
  opts = programs.pretrain_options(config)
  tfds_prepare.ensure_prepared(opts.data.dataset)  # downloaded on first use, as main.py does
  data = pretrain.train_data_options(opts, num_images, host_views=True)
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
  mixed = augment.mix_views(jax.random.fold_in(rng, 1), views[:, 0], views[:, 1],
                            mode=m.mix_mode, mix_lambda=m.mix_lambda, alpha=m.mix_alpha,
                            prob=m.mix_prob)
  source = sources.open_source(opts.data.dataset, opts.data.split)
  originals = np.stack([_original(source, i, opts.image_size, bad_images)
                        for i in batch["index"]])
  to_u8 = lambda x: np.clip(np.round(np.asarray(x) * 255), 0, 255).astype(np.uint8)
  grid = make_grid([originals, to_u8(views[:, 0]), to_u8(views[:, 1]), to_u8(mixed)], scale)
  grid.save(out)
  return out


def _original(source, index: int, size: int, bad_images) -> np.ndarray:
  """The un-augmented example ``index`` of a sources.Source (resize + centre crop), uint8."""
  from mixsiam_jax.data import decode, host_augment, sources  # pylint: disable=g-import-not-at-top
  data, name = sources.read_example(source, index)
  image, _ = decode.decode_image(data, name, bad_images)
  return host_augment.eval_transform(image, size, "resize_center_crop").numpy()


def main(argv):
  """absl's entry point: writes --out under cli.run_tool (one-line errors, exit status)."""
  def run():
    if len(argv) > 1:
      raise UserError(f"unexpected argument(s) {' '.join(argv[1:])}: every option is a flag, "
                      "e.g. --config=configs/cifar10.py --out=grid.png (see --help).")
    out = write_grid(_CONFIG.value, _OUT.value, _NUM.value, _SCALE.value)
    print(f"Wrote {out}: rows original / view 1 / view 2 / mixed, {_NUM.value} examples.")

  cli.run_tool(run, tensorflow=True, jax_backend=True)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
