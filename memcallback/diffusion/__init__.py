"""Diffusion core: noise schedules, parameterization conversions, the model protocol and the sampler."""

from memcallback.diffusion.parameterization import (
    PREDICTION_TYPES,
    PredictionType,
    check_prediction_type,
    convert,
    from_epsilon,
    to_epsilon,
)
from memcallback.diffusion.protocol import DiffusionModel, check_model, predict_epsilon, score, score_function
from memcallback.diffusion.sampler import SamplerOutput, ddim_sample, ddpm_sample, randn, sampling_timesteps
from memcallback.diffusion.schedule import NoiseSchedule

__all__ = [
    "PREDICTION_TYPES",
    "DiffusionModel",
    "NoiseSchedule",
    "PredictionType",
    "SamplerOutput",
    "check_model",
    "check_prediction_type",
    "convert",
    "ddim_sample",
    "ddpm_sample",
    "from_epsilon",
    "predict_epsilon",
    "randn",
    "sampling_timesteps",
    "score",
    "score_function",
    "to_epsilon",
]
