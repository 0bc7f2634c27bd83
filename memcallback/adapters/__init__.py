"""Adapters that let memcallback watch models from other libraries.

    math_attention           attention on PyTorch's math backend (double backward, forward-mode AD)
    DiffusersProtocolMixin   a LightningModule holding a diffusers UNet + scheduler becomes monitorable
    DiffusersModel           a diffusers UNet + scheduler as a model for ``memcallback.analyze``
    schedule_from_diffusers  the NoiseSchedule of a diffusers DDPM/DDIM scheduler

The diffusers adapter reads the objects it is given and never imports diffusers itself; install the two
together with ``pip install memcallback[diffusers]``.
"""

from memcallback.adapters.diffusers import (
    DiffusersModel,
    DiffusersProtocolMixin,
    prediction_type_from_diffusers,
    schedule_from_diffusers,
)
from memcallback.diffusion.attention import math_attention

__all__ = [
    "DiffusersModel",
    "DiffusersProtocolMixin",
    "math_attention",
    "prediction_type_from_diffusers",
    "schedule_from_diffusers",
]
