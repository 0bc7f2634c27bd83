"""Reference networks and the reference diffusion LightningModule."""

from memcallback.app.models.ema import EMA
from memcallback.app.models.mlp import ResidualMLP
from memcallback.app.models.module import DiffusionModule
from memcallback.app.models.spec import build_network, network_spec
from memcallback.app.models.unet import SmallUNet

__all__ = ["EMA", "DiffusionModule", "ResidualMLP", "SmallUNet", "build_network", "network_spec"]
