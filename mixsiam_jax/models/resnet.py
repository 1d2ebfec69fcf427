"""ResNet-18/34/50/101/152 (torchvision v1.5 layout) with a width knob and two stems.

The 'imagenet' stem is torchvision's 7x7/2 convolution and 3x3/2 max-pool; the
'cifar' stem is the 3x3/1 convolution without max-pool used for 32x32 inputs.
Padding is explicit and symmetric as in PyTorch, so imported torchvision weights
give the same features. The output is the globally average-pooled feature
vector (no classifier).
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mixsiam_jax.models import precision
from mixsiam_jax.models.activation import relu
from mixsiam_jax.models.conv import conv_function
from mixsiam_jax.models.init import conv_kernel_init
from mixsiam_jax.models.norm import ViewBatchNorm
from mixsiam_jax.options.training import check_backbone

# depth -> (block kind, blocks per stage)
RESNET_STAGES = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


def conv_layer(features: int, kernel: int, stride: int, dtype: Any, conv_impl: str, *,
               padding: Any = None, **kwargs) -> nn.Conv:
  """A bias-free convolution with PyTorch's symmetric padding and initialiser.

  Args:
    features: output channels.
    kernel: side of the square kernel.
    stride: stride in both directions.
    dtype: compute dtype; below float32 the kernel stays float32 up to the
      convolution, which returns its gradient in float32 (models/precision.py).
    conv_impl: 'xla' or 'matmul_weight_grad' (see models/conv.py).
    padding: explicit padding; default kernel // 2 on every side.
    **kwargs: passed to nn.Conv (name, parent).

  Returns:
    The nn.Conv.
  """
  pad = kernel // 2
  extra = {"promote_dtype": precision.promote_inputs} if precision.is_reduced(dtype) else {}
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)) if padding is None else padding,
                 use_bias=False, dtype=dtype, kernel_init=conv_kernel_init,
                 conv_general_dilated=conv_function(conv_impl, dtype), **extra, **kwargs)


class ResidualBlock(nn.Module):
  """torchvision's residual blocks: 'basic' (3x3 -> 3x3) or 'bottleneck' (1x1 ->
  3x3, strided as in torchvision v1.5 -> 1x1 x4), with an identity or 1x1
  projection shortcut.

  Parameters are named conv1, bn1, conv2, ... and downsample_conv/_bn, as in
  torchvision, whichever the kind.
  """
  kind: str
  features: int
  stride: int
  dtype: Any = jnp.float32
  conv_impl: str = "xla"

  @nn.compact
  def __call__(self, x, train: bool, num_views: int):
    # (output channels, kernel, stride) of each convolution.
    if self.kind == "basic":
      convs = [(self.features, 3, self.stride), (self.features, 3, 1)]
    else:
      convs = [(self.features, 1, 1), (self.features, 3, self.stride),
               (self.features * 4, 1, 1)]
    y = x
    for i, (features, kernel, stride) in enumerate(convs, start=1):
      last = i == len(convs)
      y = conv_layer(features, kernel, stride, self.dtype, self.conv_impl, name=f"conv{i}")(y)
      # Zero-init of the last scale makes each block start as the identity.
      y = ViewBatchNorm(dtype=self.dtype, name=f"bn{i}",
                        scale_init=nn.initializers.zeros if last else nn.initializers.ones
                        )(y, train, num_views)
      y = y if last else relu(y)
    return relu(y + _shortcut(self, x, convs[-1][0], train, num_views))


def _shortcut(block: nn.Module, x, out_features: int, train: bool, num_views: int):
  """torchvision's downsample branch: 1x1 strided conv + BN when shapes change."""
  if block.stride == 1 and x.shape[-1] == out_features:
    return x
  y = conv_layer(out_features, 1, block.stride, block.dtype, block.conv_impl,
                 padding="VALID", name="downsample_conv", parent=block)(x)
  return ViewBatchNorm(dtype=block.dtype, name="downsample_bn", parent=block)(y, train, num_views)


class ResNet(nn.Module):
  """ResNet backbone returning globally average-pooled features.

  Attributes:
    depth: 18, 34, 50, 101 or 152.
    width: channels of the first stage (64 = standard); stages use width x (1, 2, 4, 8).
    stem: 'imagenet' or 'cifar'.
    dtype: compute dtype (parameters, their gradients and BN statistics stay float32).
    remat: recompute each residual block's activations in the backward pass
      instead of storing them (less memory for larger per-device batches, one
      more forward pass of the backbone; same parameters and gradients).
    conv_impl: 'xla' or 'matmul_weight_grad' (weight gradients as per-tap
      matmuls, faster on XLA:CPU; see models/conv.py). Same parameters, outputs
      and gradients either way. The caller resolves a config's 'auto' from the
      devices of the mesh.
  """
  depth: int = 50
  width: int = 64
  stem: str = "imagenet"
  dtype: Any = jnp.float32
  remat: bool = False
  conv_impl: str = "xla"

  @property
  def feature_dim(self) -> int:
    """Length of the pooled feature vector."""
    kind, _ = RESNET_STAGES[self.depth]
    return self.width * 8 * (4 if kind == "bottleneck" else 1)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, num_views: int = 1) -> jax.Array:
    """Computes pooled features.

    Args:
      x: images [N, H, W, 3] (NHWC), normalised.
      train: batch statistics (True) or running statistics (False) in BatchNorm.
      num_views: views interleaved batch-major along N (see ViewBatchNorm).

    Returns:
      Features [N, feature_dim] in float32.
    """
    check_backbone(self.depth, self.width, self.stem, "model")
    kind, stages = RESNET_STAGES[self.depth]
    block_cls = ResidualBlock
    if self.remat:
      # `train` and `num_views` (positions 2 and 3, counting self) select Python branches.
      block_cls = nn.remat(block_cls, static_argnums=(2, 3))
    x = x.astype(self.dtype)
    if self.stem == "imagenet":
      x = conv_layer(self.width, 7, 2, self.dtype, self.conv_impl, name="conv1")(x)
    else:
      x = conv_layer(self.width, 3, 1, self.dtype, self.conv_impl, name="conv1")(x)
    x = relu(ViewBatchNorm(dtype=self.dtype, name="bn1")(x, train, num_views))
    if self.stem == "imagenet":
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage, num_blocks in enumerate(stages):
      for block in range(num_blocks):
        stride = 2 if stage > 0 and block == 0 else 1
        x = block_cls(kind, self.width * 2**stage, stride, self.dtype, self.conv_impl,
                      name=f"layer{stage + 1}_{block}")(x, train, num_views)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))
