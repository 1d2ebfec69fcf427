r"""MixSiam on ImageNet with ResNet-50: the paper's main recipe.

  python main.py --config=configs/imagenet.py --workdir=/ckpt/mixsiam_in1k            # batch 128 (paper)
  python main.py --config=configs/imagenet.py:b512 --workdir=/ckpt/mixsiam_in1k_b512   # SimSiam's batch
  python main.py --config=configs/imagenet.py:b4096 --workdir=/ckpt/mixsiam_in1k_b4096 # TPU slices

Recipe (MixSiam paper; official SimSiam code for the rest): ResNet-50 with the
ImageNet stem, 3-layer 2048-d projector, predictor 2048-512-2048, SGD momentum
0.9, weight decay 1e-4 on all parameters, lr = 0.05 x batch/256 with per-step
cosine decay and no warm-up, constant predictor lr, lam = mix_lambda = 0.5,
aggregation max. Augmentations: RandomResizedCrop(224, scale 0.2-1), colour
jitter (0.4, 0.4, 0.4, 0.1) p=0.8, grayscale p=0.2, Gaussian blur sigma 0.1-2
p=0.5, flip. The paper trains at batch 128 on 4 V100s; SimSiam used 512.
Published linear top-1 (ImageNet val, configs/linear_probe.py:imagenet):
MixSiam 69.7 / 71.1 / 71.9 / 72.3 at 100 / 200 / 400 / 800 epochs
(SimSiam 68.1 / 70.0 / 70.8 / 71.3 at 100 / 200 / 400 / 1000).
Variants: '' (batch 128, 100 epochs), 'b512', 'ep200', 'ep400', 'ep800', and
'b4096': batch 4096 for TPU slices and multi-GPU hosts (256 images per chip on a
v5e-16), lr by the same linear rule (0.8) with a 10-epoch linear warm-up, since
the recipe warms up at batch 1024 and above; neither paper reports this batch
with MixSiam. Plan it before renting: docs/accelerators.md.
"""
import ml_collections

from configs import cifar10


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """Returns the ImageNet ResNet-50 MixSiam config for `variant`."""
  config = cifar10.get_config()
  config.dataset = config.eval_dataset = "tfds:imagenet2012"
  config.eval_split = "validation"
  config.image_size = 224
  config.data.blur_prob = 0.5
  # The host only decodes; the accelerator resizes the crops (docs/input_pipeline.md), from
  # 512 px canvases: most ImageNet training images have a longer side of at most 500 px.
  config.data.canvas_size = 512
  config.data.eval_transform = "resize_center_crop"
  config.model.depth = 50
  config.model.stem = "imagenet"
  config.model.projector_layers = 3
  config.batch_size = 128
  config.num_epochs = 100
  config.optim.base_lr = 0.05
  config.optim.weight_decay = 1e-4
  config.log_every_steps = 100
  config.checkpoint_every_steps = 5000
  config.keep_checkpoints_every_steps = 50000
  config.eval_every_steps = 0  # a kNN pass over 1.28M images is costly: only at the end
  config.eval_batch_size = 1024
  if variant == "b512":
    config.batch_size = 512
  elif variant == "b4096":
    config.batch_size = 4096
    config.optim.warmup_epochs = 10
  elif variant in ("ep200", "ep400", "ep800"):
    config.num_epochs = int(variant[2:])
  elif variant:
    raise ValueError(f"Unknown variant {variant!r} of configs/imagenet.py; "
                     "use '', 'b512', 'b4096', 'ep200', 'ep400' or 'ep800'.")
  return config
