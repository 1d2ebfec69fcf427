"""Tests of options/data_names.py: data set names, evaluation transforms, folder splits."""
import pytest

from mixsiam_jax.errors import DatasetError
from mixsiam_jax.options import data_names


def test_parse_dataset():
  assert data_names.parse_dataset("tfds:cifar10") == ("tfds", "cifar10")
  assert data_names.parse_dataset("folder:/a:b") == ("folder", "/a:b")
  for bad in ("cifar10", "tfds:", "x:y", None):
    with pytest.raises(DatasetError, match="^eval_dataset=.* must be 'tfds:NAME'"):
      data_names.parse_dataset(bad, "eval_dataset")


def test_check_split_checks_folder_splits_only():
  data_names.check_split("tfds:cifar10", "train[:4.5]", "dataset", "train_split")  # TFDS's own
  data_names.check_split("folder:/x", "[:90%]", "dataset", "train_split")
  with pytest.raises(DatasetError, match=r"^eval_split='\[1%:2\]' is not a valid split.*both"):
    data_names.check_split("folder:/x", "[1%:2]", "eval_dataset", "eval_split")


def test_parse_folder_split():
  assert data_names.parse_folder_split("train") == (None, None, False)
  assert data_names.parse_folder_split("train[:90%]") == (None, 90.0, True)
  assert data_names.parse_folder_split("[-500:]") == (-500, None, False)
  with pytest.raises(DatasetError, match=r"'\[:4.5\]'.*integers"):
    data_names.parse_folder_split("[:4.5]")
