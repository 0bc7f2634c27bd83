"""Every signal of the realistic-scale study, measured on one checkpoint and cached.

Per checkpoint (all from fixed seeds, so every checkpoint of every run sees the same initial noises):

- ground truth: ``num_samples`` DDIM-50 samples from probe seed 1, each labelled a copy when
  ``d1 / d2 < 1/3`` against the run's distinct training patches;
- ours: :func:`memcallback.analyze` with ``MEASURED`` (sigma 0.1) on the first
  ``num_measured`` of those noises, so its per-sample statistics sit on the same samples as the labels;
- SLQ: the spectral density of the same symmetrized Hessian at the same states ``x_t``
  (:func:`memcallback.spectral.slq_density`, ``SLQ_PROBES`` probe x ``SLQ_STEPS`` Lanczos steps per sample)
  and from it the near-zero-curvature count ``d * sum_j w_j 1[|sigma^2 theta_j| < 1/2]`` (directions
  with ``mu`` in (0.5, 1.5));
- the mean stable rank ``||W||_F^2 / ||W||_2^2`` of the weight matrices (conv kernels as ``out x in*k*k``);
- wall time of each part (the cost of a check).
"""

from __future__ import annotations

import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from benchmarks.scale.runs import RunSpec, checkpoint, datamodule, denoising_loss, run_dir
from memcallback import analyze
from memcallback.diffusion import ddim_sample, score_function
from memcallback.measure.analysis import measurement_mode, probe_noise
from memcallback.measure.ground_truth import memorization_labels
from memcallback.measure.sharpness import SharpnessConfig, memorization_score
from memcallback.spectral import jacobian_operator, slq_density

SIGMA = 0.1
PROBE_SEED = 1
SLQ_PROBES = 1
SLQ_STEPS = 20
NEAR_ZERO = 0.5  # |sigma^2 lambda| below this counts as near-zero curvature
#: how every checkpoint of the study is measured: the defaults as committed in d34267d (``k=8``, Krylov budget 46,
#: 8 trace probes); a score over fewer directions is computed from the same ``mu``.
MEASURED = SharpnessConfig(k=8, krylov_steps=46, score_statistic="top_mu", flag_threshold=0.39)
#: fields of ``SharpnessConfig`` that only turn the measured ``mu`` into a score and a flag: a cached measurement
#: is re-scored, not measured again, when only these change.
SCORE_FIELDS = ("score_statistic", "flag_threshold")


def measured_steps(spec: RunSpec, every: int) -> list[int]:
    """The checkpoints of ``spec`` that get measured: every ``every`` training steps of its grid, from ``every``
    on (the first check of a monitor comes after ``every`` steps; the untrained step 0 is not measured)."""
    return [s for s in spec.grid if s % every == 0 and s > 0]


def stable_rank(network: nn.Module) -> float:
    """Mean over weight matrices (``dim >= 2``: linear and conv layers) of ``||W||_F^2 / ||W||_2^2``."""
    ranks = []
    with torch.no_grad():
        for p in network.parameters():
            if p.dim() >= 2:
                w = p.reshape(p.shape[0], -1).double()
                ranks.append((w.square().sum() / torch.linalg.matrix_norm(w, ord=2).square()).item())
    return float(np.mean(ranks))


def near_zero_count(module: nn.Module, states: Tensor, timestep: int, sigma: float, seed: int) -> Tensor:
    """SLQ estimate ``[B]`` of the number of directions with ``|sigma^2 lambda(S)| < NEAR_ZERO``."""
    with measurement_mode(module):
        op = jacobian_operator(score_function(module, timestep), states, symmetrize=True)
        density = slq_density(op, SLQ_PROBES, SLQ_STEPS, torch.Generator().manual_seed(seed))
    near = (sigma**2 * density.nodes).abs() < NEAR_ZERO
    return states[0].numel() * (density.weights * near).sum(dim=1)


def top_mu_score(mu: np.ndarray) -> np.ndarray:
    """The ``top_mu`` score (``MEASURED``'s, the default before issue 11) of cached ``mu [n, k]``, by the library."""
    nan = torch.full((len(mu),), float("nan"))
    return memorization_score(torch.from_numpy(mu), nan, nan, mu.shape[1], "top_mu").numpy()


def measurement_key(config: SharpnessConfig) -> str:
    """The fields of ``config`` that change what is measured (all but ``SCORE_FIELDS``)."""
    return repr({f.name: getattr(config, f.name) for f in fields(config) if f.name not in SCORE_FIELDS})


def rescore(measurement: dict[str, Any], config: SharpnessConfig) -> dict[str, Any]:
    """Set the per-sample ``score`` and ``flagged`` of a measurement from its ``k`` largest ``mu`` under ``config``
    (``MEASURED`` resolved 8 of them), ``mu_top4``, the mean of the 4 largest (the statistic of the default
    score without its clamp), and ``former_score``, the default score before issue 11 (top_mu over all 8)."""
    ps = measurement["per_sample"]
    ps["mu_top4"] = measurement["mu"][:, :4].mean(axis=1)
    ps["former_score"] = top_mu_score(measurement["mu"])
    mu = torch.from_numpy(measurement["mu"][:, : config.k])
    score = memorization_score(mu, torch.from_numpy(ps["effective_dim"]), torch.from_numpy(ps["flat_count"]),
                               measurement["samples"][0].size, config.score_statistic)
    ps["score"] = score.float().numpy()
    ps["flagged"] = (score > config.flag_threshold).numpy()
    measurement["config"] = repr(config)
    return measurement


def measure_checkpoint(cache: Path, spec: RunSpec, step: int, num_samples: int, num_measured: int,
                       sigma: float = SIGMA) -> dict[str, Any]:
    """All signals of one checkpoint (see the module docstring) at noise level ``sigma``, measured with
    ``MEASURED`` and cached in ``<run>/measure/``; the score and flags always follow today's ``SharpnessConfig()``
    (from the cached ``mu``)."""
    level = "" if sigma == SIGMA else f"_sigma{sigma:g}"
    path = run_dir(cache, spec) / "measure" / f"step{step:06d}_{num_samples}_{num_measured}{level}.pt"
    config = MEASURED
    if path.exists():
        cached = torch.load(path, weights_only=False)
        if cached["measurement"] == measurement_key(config):
            return rescore(cached, SharpnessConfig())
    torch.set_num_threads(1)
    module = checkpoint(cache, spec, step)
    dm = datamodule(spec)
    train_x = dm.unique_train_data()
    t = module.schedule.timestep_for_sigma(sigma)
    sigma_t = module.schedule.sigma(t, torch.float64).item()
    noise = probe_noise(num_samples, module.data_shape, PROBE_SEED)
    seconds: dict[str, float] = {}

    start = time.perf_counter()
    with torch.no_grad():  # in chunks of num_measured: the first chunk is exactly analyze()'s batch
        outs = [ddim_sample(module, chunk, 50, record=[t]) for chunk in noise.split(num_measured)]
    samples = torch.cat([o.sample for o in outs])
    labels = memorization_labels(samples, train_x)
    seconds["sampling_all"] = time.perf_counter() - start

    report = analyze(module, noise=noise[:num_measured], sigmas=(sigma,), config=config, train_data=train_x)
    seconds["analyze"] = report.seconds
    # analyze() samples the same noises with gradients enabled; its samples are the ones its statistics belong
    # to, so its labels are used for the measured probes (the difference is recorded).
    copied = labels.copied.clone()
    copied[:num_measured] = report.labels.copied
    resampling_error = (report.samples - outs[0].sample).abs().max().item()
    stats = report.primary

    start = time.perf_counter()
    slq = near_zero_count(module, outs[0].trajectory[t], t, sigma_t, PROBE_SEED)
    seconds["slq"] = time.perf_counter() - start
    start = time.perf_counter()
    rank = stable_rank(module.network)
    seconds["stable_rank"] = time.perf_counter() - start
    start = time.perf_counter()
    val_loss = denoising_loss(module, dm.val_data)
    seconds["val_loss"] = time.perf_counter() - start

    per_sample = {name: v.numpy() for name, v in stats.scalars().items()}
    per_sample["flagged"] = stats.flagged.numpy()
    per_sample["near_zero_count"] = slq.detach().double().numpy()
    result = {
        "step": step, "timestep": t, "sigma": sigma_t, "config": repr(config), "measurement": measurement_key(config),
        "products": dict(stats.products),
        "copied": copied.numpy(), "distance_ratio": labels.distance_ratio.numpy(),
        "nearest_index": labels.nearest_index.numpy(), "per_sample": per_sample, "resampling_error": resampling_error,
        "samples": report.samples.numpy().astype(np.float32), "stable_rank": rank,
        "val_loss": val_loss, "seconds": seconds, "mu": stats.mu.numpy(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(result, path)
    return rescore(result, SharpnessConfig())
