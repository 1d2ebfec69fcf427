"""The names a config gives data by, checked without TensorFlow: data sets and eval transforms.

The options (mixsiam_jax/options/programs.py) check them when they are built, so
that a misspelt data set is refused before anything is opened; sources.py and
the pipelines read the data they name.
"""
from typing import Tuple

from mixsiam_jax.data import DatasetError, folders

# The deterministic transforms evaluation images are read with (data/host_augment.py).
EVAL_TRANSFORMS = ("identity", "resize_center_crop")


def parse_dataset(dataset: str, field: str = "dataset") -> Tuple[str, str]:
  """Splits a data set name: 'tfds:NAME' | 'folder:PATH' -> (kind, rest).

  Args:
    dataset: the name.
    field: the config field that gave it, named in the error.

  Returns:
    ('tfds' or 'folder', NAME or PATH).

  Raises:
    DatasetError: naming ``field`` and the accepted forms.
  """
  kind, sep, rest = dataset.partition(":") if isinstance(dataset, str) else ("", "", "")
  if not sep or kind not in ("tfds", "folder") or not rest:
    raise DatasetError(f"{field}={dataset!r} must be 'tfds:NAME' (e.g. tfds:cifar10) or "
                       "'folder:PATH' (PATH/<class>/<image>).")
  return kind, rest


def check_split(dataset: str, split: str, dataset_field: str, split_field: str) -> None:
  """Checks a data set name and, for a folder, its split string (naming each one's field)."""
  kind, _ = parse_dataset(dataset, dataset_field)
  if kind == "folder":
    folders.parse_folder_split(split, split_field)
