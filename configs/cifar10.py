r"""MixSiam on CIFAR-10: the paper's ResNet-18 ablation recipe.

Pretrain (TFDS cifar10 must be prepared, or point at an image folder):

  python main.py --config=configs/cifar10.py --workdir=/tmp/mixsiam_c10
  python main.py --config=configs/cifar10.py --workdir=/tmp/mixsiam_c10 \
      --config.dataset=folder:/data/cifar10/train

Recipe (MixSiam paper, CIFAR-10 ablation; SimSiam paper App. D for the rest):
ResNet-18 with the CIFAR stem, 2-layer 2048-d projector, SGD lr 0.03 x batch/256,
momentum 0.9, weight decay 4e-4, batch 512, 800 epochs, lam = mix_lambda = 0.5,
no blur. The paper reports 93.35% kNN/linear top-1 on the CIFAR-10 test split
with aggregation=max (92.71 mean, 92.86 none, 90.71 without mixture).

A variant is chosen after a colon: `--config=configs/cifar10.py:tiny` runs a few
steps of a small ResNet on CPU.
"""
import ml_collections
from ml_collections import config_dict


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """Returns the CIFAR-10 MixSiam config; `variant` may be '' or 'tiny'."""
  config = ml_collections.ConfigDict()
  # Program to run: 'pretrain' | 'linear_probe' | 'knn'.
  config.program = "pretrain"

  # --- data -----------------------------------------------------------------
  # 'tfds:NAME' or 'folder:PATH' (PATH/<class>/<image>) for pretraining.
  config.dataset = "tfds:cifar10"
  # Split: any TFDS split string (e.g. 'train[:90%]'); for folders a per-class slice such as
  # '[:4500]' or '[90%:]' ('train', 'test' or any bare name = the whole folder).
  config.train_split = "train"
  # Data set and split for the kNN monitor and probes; '' disables them.
  config.eval_dataset = "tfds:cifar10"
  config.eval_split = "test"
  # Side of the square training crops, in pixels.
  config.image_size = 32
  config.data = ml_collections.ConfigDict()
  # RandomResizedCrop area range (official code: (0.2, 1.0)).
  config.data.crop_scale = (0.2, 1.0)
  # Colour jitter strengths: brightness, contrast, saturation, hue (official: 0.4, 0.4, 0.4, 0.1).
  config.data.color_jitter = (0.4, 0.4, 0.4, 0.1)
  # Probability of applying colour jitter (official: 0.8).
  config.data.color_jitter_prob = 0.8
  # Probability of converting a view to grayscale (official: 0.2).
  config.data.grayscale_prob = 0.2
  # Probability of Gaussian blur; the CIFAR recipe has no blur (ImageNet: 0.5).
  config.data.blur_prob = 0.0
  # Range of the blur's sigma, as a fraction-free pixel value (official: (0.1, 2.0)).
  config.data.blur_sigma = (0.1, 2.0)
  # Colour jitter, grayscale and blur on the device inside the jitted step (True) or on the host.
  config.data.photometric_on_device = True
  # Where the crops are resized and flipped: True = the host decodes and draws the crop windows,
  # the jitted step resizes (antialiased, as tf.image.resize) and flips; False = the host does
  # it all. Chosen per recipe from docs/input_pipeline.md's measurements (the same windows):
  # the host delivers 1.5x the examples per core this way at 32 px too.
  config.data.resize_on_device = True
  # Side of the uint8 canvas that carries each decoded image to the device (resize_on_device);
  # a larger image is shrunk on the host to fit, counted and reported. CIFAR images are 32 px.
  config.data.canvas_size = 32
  # Skip (and report once) undecodable images instead of failing.
  config.data.skip_bad_images = True
  # Batches kept ready on the device ahead of the step.
  config.data.device_prefetch = 2
  # Eval transform: 'identity' (CIFAR) or 'resize_center_crop' (ImageNet: resize to 256/224 of image_size).
  config.data.eval_transform = "identity"

  # --- model ----------------------------------------------------------------
  config.model = ml_collections.ConfigDict()
  # ResNet depth: 18, 34, 50, 101 or 152.
  config.model.depth = 18
  # Channels of the first stage (64 = standard ResNet).
  config.model.width = 64
  # 'cifar' (3x3 stride-1 conv, no max-pool) or 'imagenet' (7x7 stride-2 conv + max-pool).
  config.model.stem = "cifar"
  # Projector depth: 2 (SimSiam CIFAR) or 3 (ImageNet).
  config.model.projector_layers = 2
  # Projector hidden and output widths.
  config.model.projector_hidden_dim = 2048
  config.model.projector_dim = 2048
  # Predictor bottleneck width (2048 -> 512 -> 2048).
  config.model.predictor_hidden_dim = 512
  # Recompute each residual block in the backward pass instead of storing its activations:
  # less memory (larger per-device batches) for one more backbone forward pass.
  config.model.remat = False
  # Convolutions: 'auto' = weight gradients as per-tap matmuls on CPU (XLA:CPU's own
  # backward-filter convolution is single-threaded and slow), XLA's convolutions on
  # GPU/TPU; 'xla' / 'matmul_weight_grad' force one. Same numbers either way.
  config.model.conv_impl = "auto"
  # Mixed precision: bfloat16 convolutions and matmuls with float32 parameters, optimiser
  # state, BN statistics and loss. None (default) = on for GPU/TPU, off on CPU (where
  # bfloat16 is emulated and slower); true/false force it.
  config.half_precision = config_dict.placeholder(bool)

  # --- method ---------------------------------------------------------------
  config.method = ml_collections.ConfigDict()
  # Weight of the siamese loss: L = lam L_siam + (1 - lam) L_mix; lam = 1 is SimSiam.
  config.method.lam = 0.5
  # Weight of view 1 in the mixed image x_m = mix_lambda x1 + (1 - mix_lambda) x2.
  config.method.mix_lambda = 0.5
  # Target of the mixed branch: 'max' (paper), 'mean', or 'none' (z of a random view).
  config.method.aggregation = "max"
  # False: a randomly chosen original view replaces the mixed image (ablation).
  config.method.mixture = True
  # 'fixed' (paper), 'beta' (per-sample Beta(mix_alpha, mix_alpha)) or 'cutmix'.
  config.method.mix_mode = "fixed"
  # Beta concentration for 'beta' and 'cutmix'.
  config.method.mix_alpha = 1.0
  # Probability that a sample is mixed at all (else x_m = x1).
  config.method.mix_prob = 1.0

  # --- optimisation ---------------------------------------------------------
  # Global batch size (all devices and hosts).
  config.batch_size = 512
  config.num_epochs = 800
  # Total steps (a positive number), or -1 to derive them from num_epochs.
  config.num_train_steps = -1
  # A resume refuses a changed num_train_steps / num_epochs unless this is true (e.g. to
  # extend a finished run); the cosine lr schedule is then recomputed for the new length.
  config.allow_length_change = False
  config.optim = ml_collections.ConfigDict()
  # 'sgd' (pretraining) or 'lars'.
  config.optim.name = "sgd"
  # Learning rate = base_lr x batch_size / 256.
  config.optim.base_lr = 0.03
  config.optim.momentum = 0.9
  # Weight decay on all parameters, added to the gradient as torch.optim.SGD does.
  config.optim.weight_decay = 4e-4
  # Linear warm-up length in epochs before the cosine decay (0: none).
  config.optim.warmup_epochs = 0
  # Keep the predictor's learning rate constant (official --fix-pred-lr).
  config.optim.fix_predictor_lr = True

  # --- bookkeeping ----------------------------------------------------------
  config.seed = 0
  config.log_every_steps = 50
  config.checkpoint_every_steps = 1000
  # Checkpoints kept: the newest `keep_checkpoints`, plus every multiple of
  # `keep_checkpoints_every_steps` (0: none).
  config.keep_checkpoints = 3
  config.keep_checkpoints_every_steps = 0
  # Write checkpoints in the background while training goes on.
  config.async_checkpointing = True
  # Steps to trace with the profiler (TensorBoard's profile tab); 0: off.
  config.profile_steps = 0
  # kNN monitor period in steps (0: only at the end); needs eval_dataset.
  config.eval_every_steps = 5000
  # Global batch for feature extraction (kNN, probes).
  config.eval_batch_size = 512
  config.knn = ml_collections.ConfigDict()
  # Neighbours and softmax temperature of the weighted kNN vote (InstDist / SimSiam-family monitors).
  config.knn.k = 200
  config.knn.temperature = 0.1
  # Online linear probe on stop-gradient features of view 1 (needs labels; reported
  # as online_probe_top1 on training batches; never changes the encoder).
  config.online_probe = True
  # Linear-probe / kNN programs: the pretraining workdir to restore.
  config.pretrained = ""

  if variant == "tiny":
    config.model.depth = 18
    config.model.width = 8
    config.model.projector_hidden_dim = 64
    config.model.projector_dim = 64
    config.model.predictor_hidden_dim = 16
    config.image_size = 16
    config.batch_size = 16
    config.num_train_steps = 6
    config.log_every_steps = 2
    config.checkpoint_every_steps = 3
    config.eval_every_steps = 0
    config.eval_batch_size = 64
    config.knn.k = 20
  elif variant:
    raise ValueError(f"Unknown variant {variant!r} of configs/cifar10.py; use '' or 'tiny'.")
  return config
