r"""kNN evaluation of a pretrained encoder (the SimSiam-family monitor as a program).

  python main.py --config=configs/knn.py --workdir=/tmp/knn --config.pretrained=/tmp/mixsiam_c10

Bank: the training split with the evaluation transform; queries: the evaluation
split. Pooled backbone features, l2-normalised, k = 200 neighbours voting with
weight exp(cos / 0.1), at the image size the checkpoint was trained at (unless
--config.image_size says otherwise). Writes results.json (knn_top1, knn_top5 in
percent; pretrained_step, image_size, pretrained_image_size) and metrics.jsonl
to --workdir; the pretraining workdir is only read. The training and evaluation
data must have the same class names.
Variants: '' (CIFAR-10), 'imagenet' (resize + centre crop; 224 px for a state-dict file).
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
