r"""MixSiam on CIFAR-100: the CIFAR-10 recipe on 100 classes.

  python main.py --config=configs/cifar100.py --workdir=/tmp/mixsiam_c100

Same network, optimiser and schedule as configs/cifar10.py (ResNet-18 CIFAR
stem, SGD lr 0.03 x batch/256, wd 4e-4, 800 epochs, lam = mix_lambda = 0.5); only
the data sets change. The paper reports CIFAR-100 only as ImageNet transfer
(77.3% linear top-1), not from-scratch pretraining, so there is no published
target for this config. Variants: '' or 'tiny'.
"""
import ml_collections

from configs import cifar10


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """Returns the CIFAR-100 MixSiam config; `variant` is '' or 'tiny'."""
  config = cifar10.get_config(variant)
  config.dataset = config.eval_dataset = "tfds:cifar100"
  return config
