"""What is trained, as validated options: method, model, photometric ops, optimiser.

options/programs.py builds these from a config, once per program; each checks
its values when it is built (options/checks.py) and raises one OptionsError
naming the config field and the fix. Everything below the programs takes these
objects (or plain values) and does not check them again.
"""
import dataclasses
from typing import Any, Optional, Tuple

from mixsiam_jax.options.checks import (OptionsError, boolean, is_number, non_negative_int,
                                        non_negative_number, one_of, positive_int,
                                        positive_number, unit_interval)

AGGREGATIONS = ("max", "mean", "none")
MIX_MODES = ("fixed", "beta", "cutmix")
STEMS = ("imagenet", "cifar")
DEPTHS = (18, 34, 50, 101, 152)
CONV_IMPLS = ("auto", "xla", "matmul_weight_grad")
OPTIMIZERS = ("sgd", "lars")



def compute_dtype(half_precision: Optional[bool], platform: str) -> str:
  """'bfloat16' or 'float32' on ``platform`` ('cpu', 'gpu', 'tpu'); None decides by platform."""
  if half_precision is None:
    return "float32" if platform == "cpu" else "bfloat16"
  return "bfloat16" if half_precision else "float32"


@dataclasses.dataclass(frozen=True)
class MethodOptions:
  """MixSiam's objective and mixed view (config.method).

  Attributes:
    lam: weight of L_siam in L = lam L_siam + (1 - lam) L_mix; 1 is SimSiam
      (no third view, no third forward pass).
    mix_lambda: weight of view 1 in x_m = mix_lambda x1 + (1 - mix_lambda) x2.
    aggregation: target of the mixed branch: 'max' | 'mean' | 'none'.
    mixture: False replaces x_m by a randomly chosen original view (ablation).
    mix_mode: 'fixed' (paper), 'beta' (per-sample Beta(alpha, alpha)), 'cutmix'.
    mix_alpha: Beta concentration of 'beta' and 'cutmix'.
    mix_prob: probability that a sample is mixed at all (else x_m = x1).
  """
  lam: float
  mix_lambda: float
  aggregation: str
  mixture: bool
  mix_mode: str
  mix_alpha: float
  mix_prob: float

  def __post_init__(self):
    for name in ("lam", "mix_lambda", "mix_prob"):
      unit_interval(f"method.{name}", getattr(self, name))
    one_of("method.aggregation", self.aggregation, AGGREGATIONS)
    one_of("method.mix_mode", self.mix_mode, MIX_MODES)
    if self.mix_mode in ("beta", "cutmix") and not self.mix_alpha > 0.0:
      raise OptionsError(f"method.mix_alpha={self.mix_alpha} must be > 0 for mix_mode "
                         f"{self.mix_mode!r}.")
    boolean("method.mixture", self.mixture)


@dataclasses.dataclass(frozen=True)
class PhotometricOptions:
  """SimSiam's colour jitter, grayscale and blur (config.data); sequences become float tuples.

  Attributes:
    color_jitter: (brightness, contrast, saturation, hue) strengths.
    color_jitter_prob: probability of applying the colour jitter.
    grayscale_prob: probability of converting a view to grayscale.
    blur_prob: probability of Gaussian blur.
    blur_sigma: (low, high) of the uniform blur sigma, in pixels.
  """
  color_jitter: Tuple[float, float, float, float]
  color_jitter_prob: float
  grayscale_prob: float
  blur_prob: float
  blur_sigma: Tuple[float, float]

  def __post_init__(self):
    try:
      jitter = tuple(float(v) for v in self.color_jitter)
      sigma = tuple(float(v) for v in self.blur_sigma)
    except (TypeError, ValueError):
      raise OptionsError(f"data.color_jitter={self.color_jitter!r} and data.blur_sigma="
                         f"{self.blur_sigma!r} must be sequences of numbers.") from None
    if len(jitter) != 4 or min(jitter) < 0 or jitter[3] > 0.5:
      raise OptionsError(f"data.color_jitter={self.color_jitter!r} must be 4 non-negative "
                         "numbers (brightness, contrast, saturation, hue <= 0.5).")
    if len(sigma) != 2 or not 0 < sigma[0] <= sigma[1]:
      raise OptionsError(f"data.blur_sigma={self.blur_sigma!r} must be (low, high) with "
                         "0 < low <= high.")
    object.__setattr__(self, "color_jitter", jitter)
    object.__setattr__(self, "blur_sigma", sigma)
    for name in ("color_jitter_prob", "grayscale_prob", "blur_prob"):
      value = getattr(self, name)
      unit_interval(f"data.{name}", value)
      object.__setattr__(self, name, float(value))


@dataclasses.dataclass(frozen=True)
class ModelOptions:
  """The encoder and heads (config.model, config.half_precision).

  Attributes:
    depth: ResNet depth (18, 34, 50, 101, 152).
    width: channels of the first stage (64 = standard).
    stem: 'cifar' (3x3 stride 1, no max-pool) or 'imagenet' (7x7 stride 2 + max-pool).
    projector_layers, projector_hidden_dim, projector_dim: projector shape.
    predictor_hidden_dim: predictor bottleneck width.
    half_precision: None (bfloat16 on GPU/TPU, float32 on CPU: decided from the
      devices of the mesh), True or False.
    remat: recompute residual blocks in the backward pass.
    conv_impl: 'auto' (per-tap matmul weight gradients on CPU, XLA's convolutions
      on GPU/TPU: decided from the mesh), 'xla' or 'matmul_weight_grad'.
    num_classes: classes of the online linear probe (0: none); not a config
      field: the program sets it from the training data.
  """
  depth: int
  width: int
  stem: str
  projector_layers: int
  projector_hidden_dim: int
  projector_dim: int
  predictor_hidden_dim: int
  half_precision: Optional[bool]
  remat: bool
  conv_impl: str
  num_classes: int = 0

  def __post_init__(self):
    check_backbone(self.depth, self.width, self.stem, "model")
    for name in ("projector_layers", "projector_hidden_dim", "projector_dim",
                 "predictor_hidden_dim"):
      positive_int(f"model.{name}", getattr(self, name))
    if self.half_precision is not None:
      boolean("half_precision", self.half_precision)
    boolean("model.remat", self.remat)
    one_of("model.conv_impl", self.conv_impl, CONV_IMPLS)
    non_negative_int("num_classes", self.num_classes, "no online probe")

  def compute_dtype(self, platform: str) -> str:
    """'bfloat16' or 'float32': the compute dtype on ``platform`` ('cpu', 'gpu', 'tpu')."""
    return compute_dtype(self.half_precision, platform)

  def conv_implementation(self, platform: str) -> str:
    """'xla' or 'matmul_weight_grad': the convolution on ``platform`` ('cpu', 'gpu', 'tpu')."""
    if self.conv_impl == "auto":
      return "matmul_weight_grad" if platform == "cpu" else "xla"
    return self.conv_impl


def check_backbone(depth: Any, width: Any, stem: Any, group: str) -> None:
  """Checks a ResNet's depth, width and stem, naming them as fields of ``group``."""
  one_of(f"{group}.depth", depth, DEPTHS)
  positive_int(f"{group}.width", width)
  one_of(f"{group}.stem", stem, STEMS)


@dataclasses.dataclass(frozen=True)
class OptimOptions:
  """Optimiser and schedule (config.optim).

  Attributes:
    name: 'sgd' or 'lars'.
    base_lr: learning rate = base_lr x global batch / 256.
    momentum: heavy-ball momentum, in [0, 1).
    weight_decay: L2 coefficient (>= 0).
    warmup_epochs: linear warm-up before the cosine decay (>= 0).
    fix_predictor_lr: keep the predictor's lr constant (official --fix-pred-lr).
  """
  name: str
  base_lr: float
  momentum: float
  weight_decay: float
  warmup_epochs: float
  fix_predictor_lr: bool

  def __post_init__(self):
    one_of("optim.name", self.name, OPTIMIZERS)
    positive_number("optim.base_lr", self.base_lr)
    if not (is_number(self.momentum) and 0.0 <= self.momentum < 1.0):
      raise OptionsError(f"optim.momentum={self.momentum!r} must lie in [0, 1).")
    non_negative_number("optim.weight_decay", self.weight_decay)
    non_negative_number("optim.warmup_epochs", self.warmup_epochs)
    boolean("optim.fix_predictor_lr", self.fix_predictor_lr)
