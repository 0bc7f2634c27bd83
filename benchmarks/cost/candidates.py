"""Settings of the check measured on fixed probe states, and their cost in forward-pass equivalents.

Used by ``benchmarks/cost/check_cost.py``. A setting is a :class:`~memcallback.measure.SharpnessConfig` plus the DDIM
steps of the probes, whether the Krylov run is warm-started from the previous check, and the fraction of the
probes whose spectrum is measured (a tier). Each is measured with the library's own
:func:`~memcallback.measure.sharpness.measure_sharpness` on the sampler's states ``x_t`` of the same probes; the
previous check of a warm start is the model ``PREVIOUS_CHECK_STEPS`` training steps earlier (see
``cost/models.py``), measured with the same setting on its own trajectory from the same probes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from benchmarks.cost.units import UnitCosts
from memcallback.diffusion import ddim_sample, sampling_timesteps, score_function
from memcallback.measure.analysis import measurement_mode
from memcallback.measure.sharpness import SharpnessConfig, SharpnessStats, measure_sharpness
from memcallback.spectral import KrylovRun, jacobian_operator, krylov_run


@dataclass(frozen=True)
class Setting:
    """One way to run the check at one noise level."""

    name: str
    config: SharpnessConfig
    sampling_steps: int = 50
    warm: bool = False
    probe_fraction: float = 1.0  # tier: the spectrum on the first fraction of the probes
    symmetric_trace: bool = False  # the trace on symmetric products (the code before this issue)


@dataclass
class States:
    """The sampler's states at the measurement timestep and the samples, for one model and probe set."""

    x_t: Tensor
    samples: Tensor


def sample_states(model: nn.Module, noise: Tensor, steps: int, timestep: int) -> States:
    with measurement_mode(model):
        out = ddim_sample(model, noise, steps, record=[timestep])
    return States(out.trajectory[timestep].detach(), out.sample.detach())


def measure(model: nn.Module, x_t: Tensor, timestep: int, config: SharpnessConfig, v0: Tensor | None = None,
            seed: int = 1) -> tuple[SharpnessStats, float]:
    """One measurement at ``x_t`` as ``analyze`` runs it (its solver generator: ``seed``), and its wall seconds."""
    sigma = model.schedule.sigma(timestep, torch.float64).item()
    device = x_t.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with measurement_mode(model):
        start = time.perf_counter()
        stats = measure_sharpness(score_function(model, timestep), x_t, timestep, sigma, config, v0=v0,
                                  generator=torch.Generator().manual_seed(seed))
        sync()
    return stats, time.perf_counter() - start


def sampling_calls(model: nn.Module, steps: int, timestep: int) -> int:
    """Network calls per probe of DDIM with ``steps`` steps that visits ``timestep``."""
    return len(sampling_timesteps(model.schedule.num_timesteps, steps, [timestep]))


def forward_equivalents(products: dict[str, int], setting: Setting, u: UnitCosts, sampling: int) -> dict[str, float]:
    """Each part of one check in forward passes of the same network and batch.

    ``products`` is ``SharpnessStats.products`` (unit: one ``J v`` or ``J^T v``; a symmetric product is 2).
    A symmetric product costs ``u.symmetric`` (or forward-mode ``J v`` + VJP), a ``J v`` ``u.jvp_*``, a ``J^T v``
    ``u.vjp``. The graph of the score costs one forward per noise level (two before this issue: the score was
    computed again without a graph).
    """
    config = setting.config
    jvp = u.ratio(u.jvp_forward_mode if config.jvp == "forward" else u.jvp_double_backward)
    vjp = u.ratio(u.vjp)
    sym = jvp + vjp if config.jvp == "forward" else u.ratio(u.symmetric)
    frac = setting.probe_fraction
    fe = {"sampling": float(sampling), "score+graph": 2.0 if setting.symmetric_trace else 1.0}
    for part, n in products.items():
        if part == "dense":
            fe[part] = n * vjp
        elif part == "hs_norm":
            fe[part] = n * jvp
        elif part == "spectrum" and config.krylov_product == "JT" and config.krylov_steps is not None:
            steps = config.krylov_steps
            fe[part] = frac * (steps * vjp + (n - steps) * jvp)
        elif part in ("spectrum", "min_eigenvalue"):
            fe[part] = frac * n / 2 * sym
        elif part == "trace":
            fe[part] = n * (sym if setting.symmetric_trace else vjp)
        elif part == "asymmetry":
            fe[part] = n / 2 * (jvp + vjp)
    return fe


def applications(products: dict[str, int], setting: Setting) -> float:
    """Jacobian products per sample (``J v`` or ``J^T v``: 1; ``S v``: 2) with the tier's fraction applied."""
    spectral = products.get("spectrum", 0) + products.get("min_eigenvalue", 0)
    trace = products.get("trace", 0) * (2 if setting.symmetric_trace else 1)
    rest = sum(n for part, n in products.items() if part not in ("spectrum", "min_eigenvalue", "trace"))
    return setting.probe_fraction * spectral + trace + rest


def train_steps(fe: dict[str, float], u: UnitCosts, probes: int) -> float:
    """The check's wall time in training steps of batch 128: forward equivalents at ``probes`` rows."""
    return sum(fe.values()) * u.forward * probes / u.batch / u.train_step


def budget_sweep(model: nn.Module, x_t: Tensor, timestep: int, k: int, budgets: list[int],
                 seed: int = 1) -> dict[int, Tensor]:
    """Top-``k`` eigenvalues of ``S`` after each budget ``n`` in ``budgets``, from one cold Lanczos run.

    A cold budget of ``n`` steps is the first ``n`` steps of one longer run from the same start (the start
    vector comes first from the generator, as in ``measure_sharpness``), so one run of ``max(budgets)`` steps
    gives them all: the Ritz values of the leading ``n x n`` block of its tridiagonal.
    """
    with measurement_mode(model):
        op = jacobian_operator(score_function(model, timestep), x_t)
        run = krylov_run(op, max(budgets), generator=torch.Generator().manual_seed(seed))
    return {n: KrylovRun(alpha=run.alpha[:, :n], beta=run.beta[:, :n], ends=run.ends[:, :n], basis=run.basis[:, :n],
                         shape=run.shape, num_matvecs=n).ritz(k, "LA").eigenvalues for n in budgets}
