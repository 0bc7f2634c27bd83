"""Per-sample detection study: every candidate sharpness statistic against the nearest-neighbour label.

For each cached run and training stage, :func:`measure_stage` draws fresh probes (seed 1, not the
callback's seed 0), samples them with DDIM-50, measures the exact (dense) spectrum at every noise level and
labels each sample with the nearest-neighbour rule (d1/d2 < 1/3). :func:`detection_rows` turns the pooled
samples into AUROC and TPR at 1% FPR per statistic, noise level and training-set size.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from memcallback import analyze
from memcallback.measure.sharpness import SharpnessConfig, SharpnessStats, memorization_score

#: candidate statistics, each oriented so that larger means "more memorized" (the sign is fixed a priori
#: from the theory: memorized = sharp = small mu, small effective dimension, few flat directions, large
#: ``||s||^2`` and ``||H s||``, a very negative smallest eigenvalue, and a near-symmetric Jacobian).
STATISTICS: dict[str, tuple[str, Callable[[SharpnessStats], torch.Tensor]]] = {
    "top_mu k=2": ("1 - mean clamp(mu, 0, 1) over the 2 flattest", lambda s: _top_mu(s, 2)),
    "top_mu k=4": ("1 - mean clamp(mu, 0, 1) over the 4 flattest", lambda s: _top_mu(s, 4)),
    "top_mu k=8": ("1 - mean clamp(mu, 0, 1) over the 8 flattest (current default)", lambda s: _top_mu(s, 8)),
    "top_mu k=16": ("1 - mean clamp(mu, 0, 1) over the 16 flattest", lambda s: _top_mu(s, 16)),
    "mean_mu k=4": ("1 - mean mu over the 4 flattest, unclamped (mu > 1 counts)", lambda s: 1.0 - s.mu[:, :4].mean(1)),
    "mean_mu k=8": ("1 - mean mu over the 8 flattest, unclamped (mu > 1 counts)", lambda s: 1.0 - s.mu[:, :8].mean(1)),
    "mu_max": ("-mu_1 (flattest direction only)", lambda s: -s.mu[:, 0]),
    "effective_dim": ("-(d + sigma^2 tr H); same ranking as -trace", lambda s: -s.effective_dim),
    "flat_count": ("-#{mu_i > 0.5} over all 64 directions", lambda s: -s.flat_count.float()),
    "eps_norm_sq": ("+||eps||^2 = sigma^2 ||s||^2", lambda s: s.eps_norm_sq),
    "hs_norm": ("+sigma^3 ||H s||", lambda s: s.hs_norm),
    "min_mu": ("-mu_min (sharpest direction)", lambda s: -s.min_mu),
    "asymmetry": ("-||J - J^T|| / ||J||", lambda s: -s.asymmetry),
}
#: statistics the callback can use as its score today (``SharpnessConfig.score_statistic``; k=8 unless named).
CALLBACK_SCORES: dict[str, Callable[[SharpnessStats], torch.Tensor]] = {
    "mean_mu k=4": lambda s: _score(s, 4, "mean_mu"),
    "top_mu k=4": lambda s: _score(s, 4, "top_mu"),
    "top_mu k=8": lambda s: _score(s, 8, "top_mu"),
    "effective_dim": lambda s: _score(s, 8, "effective_dim"),
    "flat_fraction": lambda s: _score(s, 8, "flat_fraction"),
}
DENSE = SharpnessConfig(k=16, solver="dense")
DIGITS_DIM = 64  # 8x8 digits


def _score(stats: SharpnessStats, k: int, statistic: str) -> torch.Tensor:
    """The callback's memorization score ``statistic`` over the ``k`` flattest directions of dense digits stats."""
    return memorization_score(stats.mu[:, :k], stats.effective_dim, stats.flat_count, DIGITS_DIM, statistic)


def _top_mu(stats: SharpnessStats, k: int) -> torch.Tensor:
    return _score(stats, k, "top_mu")


@dataclass
class Stage:
    """Samples of one model at one training step: labels and every statistic at every noise level."""

    n: int
    step: int
    copied: np.ndarray  # [B] bool: the nearest-neighbour label
    values: dict[tuple[str, float], np.ndarray]  # (statistic, sigma) -> [B]
    scores: dict[tuple[str, float], np.ndarray]  # (callback score, sigma) -> [B]


def measure_stage(module: torch.nn.Module, train_data: torch.Tensor, n: int, step: int, sigmas: tuple[float, ...],
                  num_samples: int) -> Stage:
    """Dense statistics at every noise level for ``num_samples`` fresh probes of one checkpoint."""
    report = analyze(module, num_samples=num_samples, sigmas=sigmas, config=DENSE, seed=1, train_data=train_data)
    values, scores = {}, {}
    for sigma, stats in zip(sigmas, report.stats.values(), strict=True):
        for name, (_, fn) in STATISTICS.items():
            values[name, sigma] = fn(stats).double().numpy()
        for name, fn in CALLBACK_SCORES.items():
            scores[name, sigma] = fn(stats).double().numpy()
    return Stage(n, step, report.labels.copied.numpy(), values, scores)


def auroc_tpr(labels: np.ndarray, values: np.ndarray, max_fpr: float = 0.01) -> tuple[float, float]:
    """AUROC and the highest TPR at FPR <= ``max_fpr`` (NaN when one class is missing)."""
    if labels.all() or not labels.any():
        return float("nan"), float("nan")
    fpr, tpr, _ = roc_curve(labels, values)
    return float(roc_auc_score(labels, values)), float(tpr[fpr <= max_fpr].max())


def pooled(stages: list[Stage], ns: tuple[int, ...], key: tuple[str, float], field: str = "values"
           ) -> tuple[np.ndarray, np.ndarray]:
    """Labels and values of ``key`` pooled over every stage of the runs with ``n`` in ``ns``."""
    chosen = [s for s in stages if s.n in ns]
    labels = np.concatenate([s.copied for s in chosen])
    return labels, np.concatenate([getattr(s, field)[key] for s in chosen])


def youden_threshold(labels: np.ndarray, values: np.ndarray) -> float:
    """The threshold maximizing TPR - FPR (a sample is flagged when its value exceeds it)."""
    fpr, tpr, thresholds = roc_curve(labels, values)
    i = int(np.argmax(tpr - fpr))
    # roc_curve flags values >= threshold; halfway to the next lower value makes ">" equivalent
    lower = values[values < thresholds[i]]
    return float((thresholds[i] + lower.max()) / 2) if lower.size else float(thresholds[i])


def rate_matching_threshold(stages: list[Stage], key: tuple[str, float]) -> tuple[float, float]:
    """The threshold (grid of 0.01) whose flagged fraction best matches the nn rate, averaged over stages.

    Returns the threshold and the mean absolute difference between flagged fraction and nn rate.
    """
    grid = np.round(np.arange(0.0, 1.0, 0.01), 2)
    errors = [np.mean([abs((s.scores[key] > thr).mean() - s.copied.mean()) for s in stages]) for thr in grid]
    i = int(np.argmin(errors))
    return float(grid[i]), float(errors[i])


def fpr_threshold(negatives: np.ndarray, max_fpr: float) -> float:
    """The smallest threshold with at most ``max_fpr`` of ``negatives`` above it."""
    return float(np.quantile(negatives, 1.0 - max_fpr, method="higher"))


def solver_rows(module: torch.nn.Module, train_data: torch.Tensor, sigma: float, num_samples: int,
                ks: tuple[int, ...]) -> list[dict[str, float]]:
    """The top_mu score under Lanczos budgets against the dense score, on one checkpoint's probes."""
    start = time.perf_counter()
    dense = analyze(module, num_samples=num_samples, sigmas=(sigma,), config=DENSE, seed=1, train_data=train_data)
    dense_s = time.perf_counter() - start
    labels = dense.labels.copied.numpy()
    rows = []
    for k in ks:
        exact = _top_mu(dense.primary, k).double().numpy()
        rows.append({"solver": "dense", "k": k, "iters": 64, "labels": labels, "score": exact, "error": 0.0,
                     "matvecs": dense.primary.num_matvecs, "seconds": dense_s, "converged": 1.0})
        for iters in (k + 8, 32, None):
            cfg = SharpnessConfig(k=k, solver="lanczos", krylov_steps=None, lanczos_iters=iters, tol=1e-3,
                                  score_statistic="top_mu")  # the dense reference above is top_mu too
            start = time.perf_counter()
            rep = analyze(module, num_samples=num_samples, sigmas=(sigma,), config=cfg, seed=1)
            seconds = time.perf_counter() - start
            score = rep.primary.memorization_score.double().numpy()
            rows.append({"solver": "lanczos", "k": k, "iters": iters or 64, "labels": labels, "score": score,
                         "error": float(np.abs(score - exact).max()), "matvecs": rep.primary.num_matvecs,
                         "seconds": seconds, "converged": rep.primary.converged.float().mean().item()})
    return rows


#: candidate statistics for 2-D data (k=1: the flattest of the two directions).
TOY_STATISTICS: dict[str, Callable[[SharpnessStats], torch.Tensor]] = {
    "top_mu k=1": lambda s: _top_mu(s, 1),
    "effective_dim": lambda s: -s.effective_dim,
    "flat_count": lambda s: -s.flat_count.float(),
    "eps_norm_sq": lambda s: s.eps_norm_sq,
    "hs_norm": lambda s: s.hs_norm,
    "min_mu": lambda s: -s.min_mu,
}


def measure_toy(module: torch.nn.Module, train_data: torch.Tensor, sigmas: tuple[float, ...], num_samples: int
                ) -> tuple[torch.Tensor, np.ndarray, dict[tuple[str, float], np.ndarray]]:
    """Samples, nn labels and every toy statistic at every noise level for fresh probes (seed 1)."""
    report = analyze(module, num_samples=num_samples, sigmas=sigmas, config=SharpnessConfig(k=1, solver="dense"),
                     seed=1, train_data=train_data)
    values = {(name, sigma): fn(stats).double().numpy()
              for sigma, stats in zip(sigmas, report.stats.values(), strict=True)
              for name, fn in TOY_STATISTICS.items()}
    return report.samples, report.labels.copied.numpy(), values
