"""evaluation/features.py: feature extraction over sharded batches, the EvalData checks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from mixsiam_jax import augment, sharding
from mixsiam_jax.data import DatasetError
from mixsiam_jax.evaluation import features
from mixsiam_jax.options import OptionsError


def test_extract_features_normalises_and_drops_padding():
  mesh = sharding.create_mesh()
  rows = NamedSharding(mesh, P(sharding.DATA_AXIS))
  rng = np.random.default_rng(4)
  images = rng.integers(0, 256, size=(24, 4, 4, 3), dtype=np.uint8)
  labels = np.arange(24)
  mask = np.ones(24, bool)
  mask[-5:] = False  # The last batch is padded.
  batches = [{k: jax.device_put(v[i:i + 8], rows) for k, v in
              (("image", images), ("label", labels), ("mask", mask))} for i in (0, 8, 16)]
  embed = jax.jit(lambda x: x.mean(axis=(1, 2)))
  feats, labs = features.extract_features(embed, iter(batches))
  expected = np.asarray(augment.normalize(jnp.asarray(images[:19], jnp.float32) / 255.0))
  np.testing.assert_allclose(feats, expected.mean(axis=(1, 2)), rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(labs, labels[:19])
  with pytest.raises(ValueError, match="no batches"):
    features.extract_features(embed, iter([]))


def test_eval_data_is_checked_when_built():
  ok = dict(dataset="folder:/x", train_split="", eval_dataset="tfds:cifar10", eval_split="test",
            image_size=32, batch_size=64)
  assert features.EvalData(**ok).transform == "identity"
  with pytest.raises(OptionsError, match="image_size=-1"):
    features.EvalData(**{**ok, "image_size": -1})
  with pytest.raises(OptionsError, match="eval_batch_size=0"):
    features.EvalData(**{**ok, "batch_size": 0})
  with pytest.raises(OptionsError, match="data.eval_transform='crop'"):
    features.EvalData(**ok, transform="crop")
  with pytest.raises(DatasetError, match="eval_dataset='cifar10'"):
    features.EvalData(**{**ok, "eval_dataset": "cifar10"})


@pytest.mark.parametrize("field,split", [("eval_split", "test[:"), ("train_split", "[1%:20]")])
def test_a_bad_folder_split_names_its_own_field(field, split):
  ok = dict(dataset="folder:/x", train_split="", eval_dataset="folder:/y", eval_split="",
            image_size=32, batch_size=64)
  with pytest.raises(DatasetError) as err:
    features.EvalData(**{**ok, field: split})
  message = str(err.value)
  assert message.startswith(f"{field}={split!r} is not a valid split of a folder (")
  assert "dataset" not in message.split("accepted")[0]
