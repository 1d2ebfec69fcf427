"""Flax Linen models: ResNet family, projector, predictor and the MixSiam network."""
from mixsiam_jax.models.heads import Predictor, Projector
from mixsiam_jax.models.mixsiam import MixSiamNetwork
from mixsiam_jax.models.norm import ViewBatchNorm
from mixsiam_jax.models.resnet import RESNET_STAGES, ResNet

__all__ = ["Predictor", "Projector", "MixSiamNetwork", "ViewBatchNorm",
           "ResNet", "RESNET_STAGES"]
