"""Weight interchange with PyTorch: torchvision ResNets and official SimSiam checkpoints.

Three state-dict layouts are understood (keys after an optional ``prefix`` and an
optional DistributedDataParallel ``module.`` are stripped):

- torchvision ResNet: ``conv1.weight``, ``bn1.*``, ``layer1.0.conv1.weight``,
  ``layer1.0.downsample.0.weight`` (conv), ``layer1.0.downsample.1.*`` (BN), ...
  The classifier ``fc.weight``/``fc.bias`` is dropped (we have no classifier).
- official SimSiam (facebookresearch/simsiam): ``encoder.*`` is a torchvision
  ResNet whose ``fc`` is the projector ``nn.Sequential`` (Linear at 3i, BN at
  3i + 1, ReLU at 3i + 2; the last BN is affine-free), ``predictor.0`` Linear
  (no bias), ``predictor.1`` BN, ``predictor.3`` Linear (with bias).
- MoCo (v1/v2): ``encoder_q.*`` is taken as the backbone; its ``fc`` head,
  ``encoder_k.*`` and the queue are dropped (their MLP has biases and no BN, so
  it does not fit our projector).

The key map is derived from our own modules: ``jax.eval_shape`` of the ResNet's
(or head's) init gives every parameter path and shape, and a name map turns
each Flax module and leaf name into torchvision's (``layer1_0`` -> ``layer1.0``,
``downsample_conv`` -> ``downsample.0``, ``kernel`` -> ``weight``, ``mean`` ->
``running_mean``, ...). Layouts: conv kernels OIHW (torch) <-> HWIO (Flax);
Linear weights [out, in] <-> Dense kernels [in, out]; both sides store the
unbiased running variance. ``num_batches_tracked`` is ignored on import and
written as 0 on export (torch only reads it when momentum=None).

The official projector's last Linear has a (frozen) bias; ours has none because
the affine-free BN after it removes any constant. In training mode that is
exact; in inference mode the BN subtracts its running mean, so on import the
bias is folded into that running mean (mean - bias) and on export the bias is
written as zeros. Both modes therefore give the same outputs, and
import(export(x)) == x exactly.

Modules: keymap.py (the derived key map), convert.py (state dict <-> variables),
files.py (.npz / .pth files and the export command line). torch is never
imported at module level: it is only needed for ``.pth`` files.
"""
from mixsiam_jax.weights.convert import (WeightsError, export_torch_state_dict,
                                         import_torch_state_dict)
from mixsiam_jax.weights.files import (TorchMissingError, WeightsFileNotFoundError,
                                       export_workdir, load_state_dict_file, main, save_npz)

__all__ = ["WeightsError", "WeightsFileNotFoundError", "TorchMissingError",
           "import_torch_state_dict", "export_torch_state_dict", "load_state_dict_file",
           "save_npz", "export_workdir", "main"]
