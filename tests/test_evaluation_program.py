"""evaluation/program.py: the image size an encoder is evaluated at, results.json."""
import json
import logging

import pytest

from configs import knn as knn_config
from configs import linear_probe as probe_config
from mixsiam_jax.evaluation import encoder, program
from mixsiam_jax.models import ResNet
from mixsiam_jax.workdir import metrics_file


def _frozen(image_size):
  return encoder.FrozenEncoder(resnet=ResNet(18, 8, "cifar"), variables={}, source="/runs/a",
                               step=3, image_size=image_size, fingerprint="")


def test_image_size_is_the_encoders_unless_set_and_a_mismatch_is_warned(caplog):
  frozen = _frozen(16)
  with caplog.at_level(logging.WARNING):
    assert program.resolve_image_size(program.FROM_ENCODER, frozen) == 16
    assert program.resolve_image_size(16, frozen) == 16
    assert not caplog.records
    assert program.resolve_image_size(32, frozen) == 32
  assert "image_size=32 differs from the 16 px that /runs/a (step 3) was trained at" in caplog.text


@pytest.mark.parametrize("module", [knn_config, probe_config])
def test_evaluation_configs_default_to_the_checkpoint_image_size(module):
  assert module.get_config().image_size == program.FROM_ENCODER
  assert module.get_config().pretrained_model.image_size == 32
  assert module.get_config("imagenet").pretrained_model.image_size == 224


def test_write_results_logs_the_numbers_and_writes_everything(tmp_path):
  results = {"knn_top1": 41.5, "pretrained_step": 6, "pretrained": "/runs/a", "flag": True}
  program.write_results(str(tmp_path), 6, results)
  assert json.loads((tmp_path / program.RESULTS_FILE).read_text()) == results
  rows = metrics_file.read_metrics(str(tmp_path))
  assert rows == [{"step": 6, "knn_top1": 41.5, "pretrained_step": 6}]
