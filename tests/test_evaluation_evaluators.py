"""evaluation/evaluators.py: the kNN monitor's data checks and numbers, the probe's accuracy."""
import numpy as np
import pytest
from PIL import Image

from mixsiam_jax import sharding
from mixsiam_jax.data import DatasetError
from mixsiam_jax.evaluation import evaluators, linear_probe
from mixsiam_jax.options.shared import EvalData, KnnOptions
from mixsiam_jax.workdir import metrics_file

VOTE = KnnOptions(k=200, temperature=0.1)


def _image_folder(root, classes, per_class=2):
  """root/<class>/<i>.png: tiny solid images (enough to list and decode)."""
  for c, name in enumerate(classes):
    (root / name).mkdir(parents=True)
    for i in range(per_class):
      Image.new("RGB", (8, 8), (30 * c, 10 * i, 0)).save(root / name / f"{i}.png")
  return root


def _data(train, other, **kw):
  return EvalData(dataset=f"folder:{train}", train_split="", eval_dataset=f"folder:{other}",
                  eval_split="", image_size=8, batch_size=8, transform="identity",
                  skip_bad_images=True, **kw)


def test_monitor_refuses_folders_with_different_class_names(tmp_path):
  train = _image_folder(tmp_path / "train", ["cat", "dog", "ship"])
  other = _image_folder(tmp_path / "eval", ["cat", "dog", "truck"])
  mesh = sharding.create_mesh()
  with pytest.raises(DatasetError, match=r"different classes.*'ship'.*'truck'"):
    evaluators.KnnMonitor(lambda v, x: x, mesh, _data(train, other), VOTE)
  # The same classes pass; an unlabelled (flat) training folder is refused by name.
  assert evaluators.KnnMonitor(lambda v, x: x, mesh, _data(train, train), VOTE).num_classes == 3
  flat = tmp_path / "flat"
  flat.mkdir()
  Image.new("RGB", (8, 8)).save(flat / "a.png")
  with pytest.raises(DatasetError, match=f"dataset=folder:{flat} has no labels; the kNN monitor"):
    evaluators.KnnMonitor(lambda v, x: x, mesh, _data(flat, train), VOTE)


@pytest.mark.slow
def test_pretraining_logged_the_knn_monitor(tiny_pretrained):
  rows = metrics_file.read_metrics(str(tiny_pretrained))
  final = [r for r in rows if "knn_top1" in r]
  assert [r["step"] for r in final] == [6]  # eval_every_steps=0: only at the end
  assert 0.0 <= final[0]["knn_top1"] <= final[0]["knn_top5"] <= 100.0


def test_probe_accuracy_is_in_percent_of_the_evaluated_examples():
  head = linear_probe.linear_head(4)
  params = {"kernel": 10.0 * np.eye(4, dtype=np.float32), "bias": np.zeros(4, np.float32)}
  labels = np.arange(8) % 4
  feats = np.eye(4, dtype=np.float32)[labels]
  assert evaluators.probe_accuracy(head, params, feats, labels) == {"probe_top1": 100.0,
                                                                    "probe_top5": 100.0}
  wrong = (labels + 1) % 4  # top-1 always wrong; 4 classes, so top-5 always right
  assert evaluators.probe_accuracy(head, params, feats, wrong) == {"probe_top1": 0.0,
                                                                   "probe_top5": 100.0}
