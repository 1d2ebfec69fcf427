"""python -m mixsiam_jax.visualize: the grid, and bad input in one line."""
import numpy as np
from PIL import Image
import pytest

from mixsiam_jax import visualize
from tests import entry_points


def test_the_grid_tiles_rows_of_images_with_gaps():
  rows = [np.full((3, 8, 8, 3), value, np.uint8) for value in (0, 255)]
  grid = visualize.make_grid(rows, scale=10)
  assert grid.size == (3 * 12 + 2, 2 * 12 + 2)
  assert grid.getpixel((2, 2)) == (0, 0, 0) and grid.getpixel((2, 14)) == (255, 255, 255)
  assert grid.getpixel((0, 0)) == (255, 255, 255)  # the gap


def test_a_data_set_that_cannot_be_read_is_one_line(tmp_path):
  # An empty TFDS_DATA_DIR as on a new machine; the folder data set does not exist.
  result = entry_points.run("-m", "mixsiam_jax.visualize", "--config=configs/cifar10.py:tiny",
                            f"--out={tmp_path / 'grid.png'}",
                            "--config.dataset=folder:/nonexistent", TFDS_DATA_DIR=tmp_path)
  line = entry_points.one_error_line(result)
  assert result.returncode == 1
  assert "/nonexistent" in line and "does not exist" in line, line
  assert not (tmp_path / "grid.png").exists()


def test_flag_and_output_mistakes_are_one_line(tmp_path):
  result = entry_points.run("-m", "mixsiam_jax.visualize", f"--out={tmp_path / 'grid.png'}")
  assert "--config" in entry_points.one_error_line(result)
  result = entry_points.run("-m", "mixsiam_jax.visualize", "--config=configs/cifar10.py:tiny",
                            "--config.modle.depth=18")
  assert "no field 'modle'" in entry_points.one_error_line(result)
  result = entry_points.run("-m", "mixsiam_jax.visualize", "--config=configs/cifar10.py:tiny",
                            f"--out={tmp_path / 'no' / 'grid.png'}")
  assert f"the folder {tmp_path / 'no'} does not exist" in entry_points.one_error_line(result)


@pytest.mark.slow
def test_the_grid_of_a_folder_data_set(cifar_jpeg_folder, tmp_path):
  out = tmp_path / "grid.png"
  result = entry_points.run("-m", "mixsiam_jax.visualize", "--config=configs/cifar10.py:tiny",
                            f"--out={out}", f"--config.dataset=folder:{cifar_jpeg_folder}",
                            "--num_images=3", "--scale=20")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  assert not [n for n in entry_points.START_NOTICES if n in result.stderr], result.stderr
  with Image.open(out) as grid:
    assert grid.size == (3 * 22 + 2, 4 * 22 + 2)  # original, view 1, view 2, mixed
