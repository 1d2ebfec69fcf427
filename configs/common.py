"""Config pieces shared by the evaluation programs (configs/knn.py, configs/linear_probe.py)."""
import ml_collections


def evaluation_data(config: ml_collections.ConfigDict, variant: str) -> None:
  """Adds the fields naming the pretrained run and the data it is evaluated on.

  Args:
    config: the config being built (modified in place).
    variant: '' (CIFAR-10 at 32 px) or 'imagenet' (224 px, resize + centre crop).
  """
  # What is evaluated: a pretraining workdir (its newest checkpoint; a resumed linear probe
  # keeps the step it started on), or a state-dict file (.pth / .pth.tar / .npz) in
  # torchvision or official SimSiam layout.
  config.pretrained = ""
  # Architecture of a state-dict file, and the side of the images it was trained on
  # (workdir checkpoints describe themselves).
  config.pretrained_model = ml_collections.ConfigDict()
  config.pretrained_model.depth = 50
  config.pretrained_model.width = 64
  config.pretrained_model.stem = "imagenet"
  config.pretrained_model.image_size = 32
  # Training-side data ('tfds:NAME' or 'folder:PATH') and split: the kNN bank or the
  # probe's training set.
  config.dataset = "tfds:cifar10"
  config.train_split = "train"
  # Evaluation data and split (kNN queries, probe accuracy).
  config.eval_dataset = "tfds:cifar10"
  config.eval_split = "test"
  # Side of the evaluated images. -1: the size the encoder was trained at (a checkpoint's
  # image_size, or pretrained_model.image_size for a file); another size is used with a
  # warning. results.json records the size used and the training size.
  config.image_size = -1
  config.data = ml_collections.ConfigDict()
  # 'identity' (CIFAR) or 'resize_center_crop' (ImageNet: resize to image_size * 256/224, crop).
  config.data.eval_transform = "identity"
  # Skip (and report once) undecodable images instead of failing.
  config.data.skip_bad_images = True
  # Global batch for feature extraction.
  config.eval_batch_size = 512
  config.seed = 0
  if variant == "imagenet":
    config.dataset = config.eval_dataset = "tfds:imagenet2012"
    config.eval_split = "validation"
    config.pretrained_model.image_size = 224
    config.data.eval_transform = "resize_center_crop"
