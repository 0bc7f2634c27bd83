"""Adapters that let memcallback watch models from other libraries.

    math_attention           attention on PyTorch's math backend (double backward, forward-mode AD)
    DiffusersProtocolMixin   a LightningModule holding a diffusers UNet + scheduler becomes monitorable
    DiffusersModel           a diffusers UNet + scheduler as a model for ``memcallback.analyze``
    schedule_from_diffusers  the NoiseSchedule of a diffusers DDPM/DDIM scheduler
    AcceleratedWatch         a MemorizationWatch in an accelerate training loop (ranks, reduction, trackers)
    AcceleratorReducer       the reduction over an accelerate job's processes

The adapters read the objects they are given and never import diffusers or accelerate themselves; install them
with ``pip install memcallback[diffusers]`` or ``pip install memcallback[accelerate]``.
"""

from memcallback.adapters.accelerate import AcceleratedWatch, AcceleratorReducer
from memcallback.adapters.diffusers import (
    DiffusersModel,
    DiffusersProtocolMixin,
    prediction_type_from_diffusers,
    schedule_from_diffusers,
)
from memcallback.diffusion.attention import math_attention

__all__ = [
    "AcceleratedWatch",
    "AcceleratorReducer",
    "DiffusersModel",
    "DiffusersProtocolMixin",
    "math_attention",
    "prediction_type_from_diffusers",
    "schedule_from_diffusers",
]
