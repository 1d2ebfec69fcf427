"""Tests of mixsiam_jax/data/sources.py: data set names, DatasetInfo, errors naming the field."""
import re
import time

import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from mixsiam_jax.data import DatasetError, sources
from mixsiam_jax.options import data_names

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")


def test_folder_info_with_class_names(cifar_jpeg_folder):
  info = sources.get_dataset_info(f"folder:{cifar_jpeg_folder}", "train")
  assert (info.num_examples, info.num_classes) == (200, 10)
  assert info.class_names == CIFAR10_CLASSES
  assert sources.get_dataset_info(f"folder:{cifar_jpeg_folder}", "[15:]").num_examples == 50


def test_folder_source_reads_examples_in_listing_order(cifar_jpeg_folder):
  source = sources.open_source(f"folder:{cifar_jpeg_folder}", "[:2]")
  data, label, name = source.fetch(tf.constant(3, tf.int64))
  assert int(label) == 1 and name.numpy().decode().endswith("automobile/0001.jpg")
  assert data.numpy() == (cifar_jpeg_folder / "automobile" / "0001.jpg").read_bytes()
  data2, name2 = sources.read_example(source, 3)
  assert data2.numpy() == data.numpy() and name2.numpy() == name.numpy()


@pytest.mark.parametrize("split", ["[10]", "test[:10", "train+test", "[a:5]", "[10:50%]",
                                   "[:4.5]", "[:150%]", "[::2]", "tr ain"])
def test_folder_split_errors_name_the_value_and_syntax(cifar_jpeg_folder, split):
  needle = re.escape(repr(split)) + r".*Accepted: .*\[:90%\]"
  with pytest.raises(DatasetError, match=needle):
    sources.get_dataset_info(f"folder:{cifar_jpeg_folder}", split)


def test_folder_split_selecting_nothing_is_an_error(cifar_jpeg_folder):
  with pytest.raises(DatasetError, match=r"'\[20:\]' selects no image"):
    sources.get_dataset_info(f"folder:{cifar_jpeg_folder}", "[20:]")


def test_errors_are_clear_and_fast(tmp_path):
  start = time.time()
  with pytest.raises(DatasetError, match="does not exist; check --config.dataset="):
    sources.get_dataset_info(f"folder:{tmp_path / 'missing'}", "train")
  with pytest.raises(DatasetError, match="^dataset='cifar10' must be 'tfds:NAME'"):
    sources.get_dataset_info("cifar10", "train")
  with pytest.raises(DatasetError, match="^eval_dataset='x:y' must be"):
    data_names.parse_dataset("x:y", "eval_dataset")
  assert time.time() - start < 5


def test_missing_eval_folder_names_eval_dataset(tmp_path):
  with pytest.raises(DatasetError, match=r"does not exist; check --config\.eval_dataset=folder:"):
    sources.get_dataset_info(f"folder:{tmp_path / 'missing'}", "test", field="eval_dataset")


def test_offline_tfds_advice_names_the_field(tmp_path):
  empty = sources.TfdsOptions(data_dir=str(tmp_path))
  start = time.time()
  with pytest.raises(DatasetError,
                     match=r"data prepare tfds:cifar10.*--config\.dataset=folder:PATH\."):
    sources.get_dataset_info("tfds:cifar10", "train", tfds_options=empty)
  with pytest.raises(DatasetError) as err:
    sources.get_dataset_info("tfds:cifar10", "test", field="eval_dataset", tfds_options=empty)
  message = str(err.value)
  assert "--config.eval_dataset=folder:PATH" in message and "--config.eval_dataset= " in message
  assert "--config.dataset" not in message
  with pytest.raises(DatasetError, match="Unknown TFDS dataset 'no_such_dataset_xyz'"):
    sources.get_dataset_info("tfds:no_such_dataset_xyz", "train")
  assert time.time() - start < 10


@pytest.mark.parametrize("random_access", [True, False])
def test_tfds_mock_info_and_class_names(random_access):
  with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE):
    info = sources.get_dataset_info("tfds:cifar10", "train",
                                    tfds_options=sources.TfdsOptions(random_access=random_access))
  # Mock data have no dataset_info.json, so TFDS does not know the names.
  assert info == sources.DatasetInfo(40, 10, ())


def test_check_same_classes():
  a = sources.DatasetInfo(10, 3, ("cat", "dog", "emu"))
  sources.check_same_classes(a, sources.DatasetInfo(5, 3, ("cat", "dog", "emu")))
  sources.check_same_classes(a, sources.DatasetInfo(5, 0, ()))  # Unlabelled: nothing to compare.
  with pytest.raises(DatasetError, match=r"dataset and --config.eval_dataset have different "
                                         r"classes \(3 vs 3; only in dataset: \['emu'\], only in "
                                         r"eval_dataset: \['owl'\]\)"):
    sources.check_same_classes(a, sources.DatasetInfo(5, 3, ("cat", "dog", "owl")))
  with pytest.raises(DatasetError, match="different order"):
    sources.check_same_classes(a, sources.DatasetInfo(5, 3, ("dog", "cat", "emu")))
