"""Fixtures for the diffusion core tests."""

from __future__ import annotations

import pytest
import torch
from analytic import GaussianModel

from memcallback.diffusion import NoiseSchedule


@pytest.fixture
def gaussian_model() -> GaussianModel:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(3, 3, generator=gen, dtype=torch.float64)
    cov = a @ a.T / 3 + 0.05 * torch.eye(3, dtype=torch.float64)
    mean = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    return GaussianModel(mean, cov, NoiseSchedule.cosine(200))
