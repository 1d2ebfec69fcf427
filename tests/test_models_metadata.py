"""models/metadata.py: what a pretraining checkpoint says about its model, written and read back."""
import json

import jax.numpy as jnp
import pytest

from mixsiam_jax.models import metadata
from tests.helpers import model_options


@pytest.mark.parametrize("half_precision,stored,cpu,gpu", [
    (None, "auto", jnp.float32, jnp.bfloat16), (True, "bfloat16", jnp.bfloat16, jnp.bfloat16),
    (False, "float32", jnp.float32, jnp.float32)])
def test_the_backbone_is_read_back_at_the_dtype_it_was_trained_in(half_precision, stored, cpu,
                                                                  gpu):
  model = model_options(depth=34, width=16, stem="imagenet", half_precision=half_precision,
                        num_classes=10)
  meta = metadata.pretraining_meta(model, image_size=96, dataset="tfds:stl10",
                                   train_split="unlabelled", seed=7)
  meta = json.loads(json.dumps(meta))  # as Orbax's JSON handler stores it
  assert meta["model"]["dtype"] == stored and meta["model"]["num_classes"] == 10
  assert (meta["image_size"], meta["dataset"], meta["train_split"], meta["seed"]) == (
      96, "tfds:stl10", "unlabelled", 7)
  for platform, dtype in (("cpu", cpu), ("gpu", gpu)):
    resnet, image_size = metadata.backbone_from_meta(meta, platform)
    assert (resnet.depth, resnet.width, resnet.stem, resnet.dtype) == (34, 16, "imagenet", dtype)
    assert image_size == 96


def test_metadata_without_a_model_is_not_a_pretraining_checkpoint():
  assert metadata.backbone_from_meta({"pretrained_step": 6}, "cpu") is None
  assert metadata.backbone_from_meta({"model": {"depth": 18}}, "cpu") is None  # no image size


def test_checkpoints_that_predate_the_recorded_dtype_were_trained_in_float32():
  meta = {"model": {"depth": 18, "width": 8, "stem": "cifar"}, "image_size": 32}
  resnet, _ = metadata.backbone_from_meta(meta, "tpu")
  assert resnet.dtype == jnp.float32
