"""evaluation/features.py: feature extraction over sharded batches, the EvalData checks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from mixsiam_jax import augment, sharding
from mixsiam_jax.evaluation import features


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




def test_an_evaluator_called_again_meets_a_rotten_file_once(tmp_path, cifar_jpeg_folder):
  import shutil  # pylint: disable=g-import-not-at-top
  from mixsiam_jax.data import decode  # pylint: disable=g-import-not-at-top
  root = shutil.copytree(cifar_jpeg_folder, tmp_path / "rotten")
  # Valid JPEG markers around garbage: passes the cheap check, fails every decoder.
  (root / "cat" / "0005.jpg").write_bytes(b"\xff\xd8\xff" + bytes(range(256)) * 2 + b"\xff\xd9")
  mesh = sharding.create_mesh()
  embed = jax.jit(lambda x: x.mean(axis=(1, 2)))
  log = decode.BadImageLog()
  runs, learned = [], []
  for _ in range(2):
    runs.append(features.dataset_features(embed, mesh, f"folder:{root}", "[:10]", image_size=16,
                                          batch_size=16, transform="resize_center_crop",
                                          bad_images=log))
    learned.append(log.remembered())
  assert learned[0] > 0 and learned[1] == learned[0]  # learned in the first pass only
  assert list(log.snapshot()) == [str(root / "cat" / "0005.jpg")]
  for first, second in zip(*runs):
    np.testing.assert_array_equal(first, second)
  assert len(runs[0][0]) == 99  # 100 images, the rotten one masked out
