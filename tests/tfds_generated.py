"""A TFDS data set whose builder generates its examples (nothing to download), for tests.

Importing this module registers ``mixsiam_generated_images``: 48 training and 12
test RGB JPEGs of 20 x 24 pixels in three classes. ``python tests/tfds_generated.py
ARGS`` runs main.py with ARGS with the builder registered, the way a user's
first command meets a data set that TFDS has not prepared yet.
"""
import pathlib
import runpy
import sys

import numpy as np
import tensorflow_datasets as tfds

NAME = "mixsiam_generated_images"
SPLIT_SIZES = {"train": 48, "test": 12}


class MixsiamGeneratedImages(tfds.core.GeneratorBasedBuilder):
  """Small RGB images in three classes, each class brightest in its own channel."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(names=["red", "green", "blue"])}),
        supervised_keys=("image", "label"))

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(n, seed)
            for seed, (split, n) in enumerate(SPLIT_SIZES.items())}

  def _generate_examples(self, num_examples, seed):
    rng = np.random.default_rng(seed)
    for i in range(num_examples):
      image = rng.integers(0, 80, (20, 24, 3), dtype=np.uint8)
      image[..., i % 3] += 150
      yield i, {"image": image, "label": i % 3}


if __name__ == "__main__":
  repo = pathlib.Path(__file__).resolve().parents[1]
  sys.argv = [str(repo / "main.py"), *sys.argv[1:]]
  sys.path.insert(0, str(repo))
  runpy.run_path(str(repo / "main.py"), run_name="__main__")
