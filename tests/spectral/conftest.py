"""Fixtures for the spectral solver tests; the operators themselves live in ``spectral_cases.py``."""

from __future__ import annotations

import pytest
import torch
from spectral_cases import CASES


@pytest.fixture(params=sorted(CASES), scope="session")
def case(request):
    """``(name, fn, x, S_exact)`` for every test operator."""
    fn, x, S = CASES[request.param]()
    return request.param, fn, x, S


def exact_extremes(S: torch.Tensor, k: int, which: str) -> torch.Tensor:
    """The ``k`` wanted eigenvalues of ``S [B, d, d]`` in SpectrumResult order."""
    ev = torch.linalg.eigvalsh(S)
    if which == "LA":
        return ev.flip(-1)[:, :k]
    if which == "SA":
        return ev[:, :k]
    order = ev.abs().argsort(dim=-1, descending=True)
    return ev.gather(-1, order)[:, :k]


@pytest.fixture
def extremes():
    return exact_extremes


def spectral_norm(S: torch.Tensor) -> torch.Tensor:
    return torch.linalg.eigvalsh(S).abs().amax(-1)


@pytest.fixture
def norm():
    return spectral_norm
