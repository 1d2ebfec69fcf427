r"""SimSiam on CIFAR-10 (lam = 1): the baseline of configs/cifar10.py at the same budget.

  python main.py --config=configs/simsiam_cifar10.py --workdir=/tmp/simsiam_c10

Identical to configs/cifar10.py except method.lam = 1, which builds a two-view
train step (no mixed view, no third forward pass). SimSiam App. D reports 91.8%
linear top-1 on the CIFAR-10 test split after 800 epochs (ResNet-18 variant);
the MixSiam paper's CIFAR-10 ablation puts MixSiam 1-2 points above its
SimSiam reproduction. Variants as in cifar10.py ('' or 'tiny').
"""
import ml_collections

from configs import cifar10


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """Returns the SimSiam CIFAR-10 config; `variant` is '' or 'tiny'."""
  config = cifar10.get_config(variant)
  config.method.lam = 1.0
  return config
