"""shared.py: the shared parts of the programs' options, checked when built."""
import pytest

from mixsiam_jax.data import DatasetError
from mixsiam_jax.options import shared
from mixsiam_jax.options.checks import OptionsError
from mixsiam_jax.options.shared import EvalData


def _eval_data(**fields):
  ok = dict(dataset="folder:/x", train_split="", eval_dataset="tfds:cifar10", eval_split="test",
            image_size=32, batch_size=64, transform="identity", skip_bad_images=True)
  return EvalData(**{**ok, **fields})


def test_eval_data_is_checked_when_built():
  assert _eval_data(image_size=-1).image_size == shared.FROM_ENCODER
  with pytest.raises(OptionsError, match="image_size=-2"):
    _eval_data(image_size=-2)
  with pytest.raises(DatasetError, match="eval_dataset='cifar10'"):
    _eval_data(eval_dataset="cifar10")


@pytest.mark.parametrize("field,split", [("eval_split", "test[:"), ("train_split", "[1%:20]")])
def test_a_bad_folder_split_names_its_own_field(field, split):
  with pytest.raises(DatasetError) as err:
    _eval_data(eval_dataset="folder:/y", **{field: split})
  message = str(err.value)
  assert message.startswith(f"{field}={split!r} is not a valid split of a folder (")
  assert "dataset" not in message.split("accepted")[0]


def test_crop_scale_becomes_a_float_pair_or_is_refused():
  assert shared.check_crop_scale([1, 1]) == (1.0, 1.0)
  for bad in ((0.5, 0.2), (0.0, 1.0), (0.2, 1.5), (0.2,), "ab"):
    with pytest.raises(OptionsError, match="data.crop_scale="):
      shared.check_crop_scale(bad)
