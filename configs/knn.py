r"""kNN evaluation of a pretrained encoder (the SimSiam-family monitor as a program).

  python main.py --config=configs/knn.py --workdir=/tmp/knn --config.pretrained=/tmp/mixsiam_c10

Bank: the training split with the evaluation transform; queries: the evaluation
split. Pooled backbone features, l2-normalised, k = 200 neighbours voting with
weight exp(cos / 0.1). Writes results.json (knn_top1, knn_top5 in percent) and
metrics.jsonl to --workdir; the pretraining workdir is only read.
Variants: '' (CIFAR-10 at 32 px), 'imagenet' (224 px, resize + centre crop).
"""
import ml_collections

from configs import common


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """Returns the kNN evaluation config; `variant` is '' or 'imagenet'."""
  config = ml_collections.ConfigDict()
  if variant not in ("", "imagenet"):
    raise ValueError(f"Unknown variant {variant!r} of configs/knn.py; use '' or 'imagenet'.")
  config.program = "knn"
  common.evaluation_data(config, variant)
  config.knn = ml_collections.ConfigDict()
  # Neighbours and temperature of the weighted vote.
  config.knn.k = 200
  config.knn.temperature = 0.1
  return config
