"""Reference networks and the reference diffusion LightningModule."""

from memcallback.models.ema import EMA
from memcallback.models.mlp import ResidualMLP
from memcallback.models.module import DiffusionModule
from memcallback.models.spec import build_network, network_spec
from memcallback.models.unet import SmallUNet

__all__ = ["EMA", "DiffusionModule", "ResidualMLP", "SmallUNet", "build_network", "network_spec"]
