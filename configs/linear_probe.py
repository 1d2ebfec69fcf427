r"""Linear probe of a pretrained encoder (the papers' linear evaluation protocol).

  python main.py --config=configs/linear_probe.py --workdir=/tmp/probe \
      --config.pretrained=/tmp/mixsiam_c10

A linear classifier on frozen, globally pooled backbone features; the backbone
stays in inference mode (BN running statistics) and is checked bit-identical to
the checkpoint afterwards. Recipe (MixSiam paper, ImageNet): LARS, batch 4096,
cosine decay, 90 epochs, weight decay 0, momentum 0.9, base lr 0.02 (the paper)
-- the official SimSiam code uses base lr 0.1 with the same optimiser; set
--config.optim.base_lr=0.1 for it. lr = base_lr x batch / 256. The paper's CIFAR
transfer probe runs 800 epochs at batch 512. Images are read at the size the
checkpoint was trained at (see configs/common.py, image_size). Writes
results.json (probe_top1, probe_top5 on the evaluation split, in percent, like
the logged probe_train_top1) and resumes from its own checkpoints, on the same
pretraining checkpoint step it started with; SIGTERM saves and stops.
Variants: '' (CIFAR-10), 'imagenet' (resize + centre crop), 'fast' (features
computed once without augmentation: minutes instead of hours on small machines).
"""
import ml_collections

from configs import common


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """Returns the linear-probe config; `variant` is '', 'imagenet' or 'fast'."""
  config = ml_collections.ConfigDict()
  if variant not in ("", "imagenet", "fast"):
    raise ValueError(f"Unknown variant {variant!r} of configs/linear_probe.py; "
                     "use '', 'imagenet' or 'fast'.")
  config.program = "linear_probe"
  common.evaluation_data(config, "imagenet" if variant == "imagenet" else "")
  # RandomResizedCrop area range of the probe's training images (torchvision default).
  config.data.crop_scale = (0.08, 1.0)
  config.probe = ml_collections.ConfigDict()
  # True: one crop + flip per image every step (official); False: features of the plain
  # images, computed once.
  config.probe.augment = True
  # Global batch of the classifier.
  config.batch_size = 4096
  config.num_epochs = 90
  # Total steps (a positive number), or -1 to derive them from num_epochs.
  config.num_train_steps = -1
  # A resume refuses a changed num_train_steps / num_epochs unless this is true (e.g. to
  # extend a finished run); the cosine lr schedule is then recomputed for the new length.
  config.allow_length_change = False
  config.optim = ml_collections.ConfigDict()
  # 'lars' (paper and official code) or 'sgd'.
  config.optim.name = "lars"
  # lr = base_lr x batch_size / 256; 0.02 in the paper, 0.1 in the official code.
  config.optim.base_lr = 0.02
  config.optim.momentum = 0.9
  config.optim.weight_decay = 0.0
  config.optim.warmup_epochs = 0
  config.log_every_steps = 50
  config.checkpoint_every_steps = 500
  config.keep_checkpoints = 2
  if variant == "fast":
    config.probe.augment = False
    config.batch_size = 256
    config.num_epochs = 30
    config.optim.name = "sgd"
    config.optim.base_lr = 0.3
  return config
