"""Which weights a check measures: an averaged copy swapped in and put back exactly, float32 whatever the dtype,
and clear errors for a copy that does not pair with the model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from memcallback.core.weights import AveragedWeights, full_precision


def test_the_average_is_swapped_in_and_the_raw_weights_come_back_exactly() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    average = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    average[1].running_mean.fill_(0.5)
    raw = {k: v.clone() for k, v in model.state_dict().items()}
    with AveragedWeights.from_modules(average, model).swapped_in():
        assert all(torch.equal(v, average.state_dict()[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(v, raw[k]) for k, v in model.state_dict().items())


def test_half_weights_are_upcast_inside_and_cast_back_after() -> None:
    model = nn.Linear(3, 3).to(torch.bfloat16)
    model.register_buffer("scale", torch.ones(3, dtype=torch.float16))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with full_precision(model):
        assert {v.dtype for v in model.state_dict().values()} == {torch.float32}
        with torch.autocast("cpu", dtype=torch.bfloat16):  # one opened inside wins (hence AcceleratedWatch sets
            # accelerate's autocast wrapper of forward aside)
            assert model(torch.ones(1, 3)).dtype == torch.bfloat16
        assert model(torch.ones(1, 3)).dtype == torch.float32
    assert all(v.dtype == before[k].dtype and torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_copy_that_does_not_pair_with_the_model_is_refused_with_what_to_do() -> None:
    with pytest.raises(ValueError, match="does not pair with the model"):
        AveragedWeights.from_modules(nn.Linear(2, 2), nn.Linear(3, 3)).tensors()
    with pytest.raises(TypeError, match="shadow_params"):
        AveragedWeights.from_ema_model(object(), nn.Linear(3, 3))
    with pytest.raises(TypeError, match="from_ema_model"):
        AveragedWeights("ema")


def test_a_check_under_inference_mode_leaves_trainable_half_weights() -> None:
    model = nn.Linear(3, 3).to(torch.bfloat16)
    with torch.inference_mode(), full_precision(model):  # a check under trainer.validate()
        model(torch.ones(1, 3))
    assert not model.weight.is_inference()
    model(torch.ones(1, 3, dtype=torch.bfloat16)).sum().backward()  # training goes on
    assert model.weight.grad is not None
