r"""kNN evaluation of a pretrained encoder (the SimSiam-family monitor as a program).

  python main.py --config=configs/knn.py --workdir=/tmp/knn --config.pretrained=/tmp/mixsiam_c10

Bank: the training split with the evaluation transform; queries: the evaluation
split. Pooled backbone features, l2-normalised, k = 200 neighbours voting with
weight exp(cos / 0.1). Writes results.json (knn_top1, knn_top5 in percent) and
metrics.jsonl to --workdir; the pretraining workdir is only read.
Variants: '' (CIFAR-10 at 32 px), 'imagenet' (224 px, resize + centre crop).
"""
import ml_collections


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """Returns the kNN evaluation config; `variant` is '' or 'imagenet'."""
  config = ml_collections.ConfigDict()
  config.program = "knn"
  # Pretraining workdir whose newest checkpoint is evaluated.
  config.pretrained = ""
  # Bank ('tfds:NAME' or 'folder:PATH') and its split.
  config.dataset = "tfds:cifar10"
  config.train_split = "train"
  # Queries.
  config.eval_dataset = "tfds:cifar10"
  config.eval_split = "test"
  # Side of the evaluated images.
  config.image_size = 32
  config.data = ml_collections.ConfigDict()
  # 'identity' (CIFAR) or 'resize_center_crop' (ImageNet: resize to image_size * 256/224, crop).
  config.data.eval_transform = "identity"
  # Skip (and report once) undecodable images instead of failing.
  config.data.skip_bad_images = True
  # Global batch for feature extraction.
  config.eval_batch_size = 512
  config.knn = ml_collections.ConfigDict()
  # Neighbours and temperature of the weighted vote.
  config.knn.k = 200
  config.knn.temperature = 0.1
  config.seed = 0
  if variant == "imagenet":
    config.dataset = config.eval_dataset = "tfds:imagenet2012"
    config.eval_split = "validation"
    config.image_size = 224
    config.data.eval_transform = "resize_center_crop"
  elif variant:
    raise ValueError(f"Unknown variant {variant!r} of configs/knn.py; use '' or 'imagenet'.")
  return config
