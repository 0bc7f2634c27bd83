"""The signals of the realistic-scale study, oriented so that larger means more memorized, and the numbers
a user decides on: nearest-neighbour rate with its bootstrap interval, onset, per-sample AUROC and TPR at
1% FPR, and stop steps of threshold rules calibrated on other runs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import roc_curve

from memcallback.measure.report import auroc

#: per-sample signals: (key in the measurement's ``per_sample``, sign, description). Orientation is fixed a
#: priori from the theory (memorized = sharp: small mu, small effective dimension, few near-zero-curvature
#: directions, a very negative sharpest direction, large ``||H s||`` and ``||eps||^2``), as on digits.
PER_SAMPLE: dict[str, tuple[str, float, str]] = {
    "score": ("score", 1.0, "+memorization score (the default: mean_mu, k=4)"),
    "former_score": ("former_score", 1.0, "+the former default score (top_mu, k=8)"),
    "mu_max": ("mu_max", -1.0, "-mu_max (flattest direction)"),
    "mu_topk": ("mu_topk", -1.0, "-mean of the top-8 mu"),
    "mu_top4": ("mu_top4", -1.0, "-mean of the top-4 mu (unclamped; digits' best, docs/validation/detect.md)"),
    "effective_dim": ("effective_dim", -1.0, "-effective dimension d + sigma^2 tr S (Hutchinson)"),
    "min_mu": ("min_mu", -1.0, "-min_mu (sharpest direction)"),
    "hs_norm": ("hs_norm", 1.0, "+sigma^3 ||H s||"),
    "eps_norm_sq": ("eps_norm_sq", 1.0, "+||eps_hat||^2"),
    "near_zero_count": ("near_zero_count", -1.0, "-SLQ count of directions with |sigma^2 lambda| < 1/2"),
}

#: the interval of every rate: percentile bootstrap over the samples.
BOOTSTRAP = 2000
ONSET = 0.05  # the onset: first checkpoint whose lower bound passes this rate
LATE = 0.10  # a stop is late once the lower bound has passed this rate


def oriented(measurement: dict, name: str) -> np.ndarray:
    """Per-sample signal ``name`` of one checkpoint, oriented (larger = more memorized)."""
    key, sign, _ = PER_SAMPLE[name]
    return sign * np.asarray(measurement["per_sample"][key], dtype=np.float64)


def rate_interval(copied: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """``(rate, lower, upper)``: the copy rate and its 95% percentile bootstrap interval."""
    copied = np.asarray(copied, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = copied[rng.integers(0, len(copied), (BOOTSTRAP, len(copied)))].mean(axis=1)
    return float(copied.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def first_step(steps: list[int], passed: list[bool]) -> int | None:
    """First step whose flag is set (``None``: never)."""
    return next((s for s, p in zip(steps, passed, strict=True) if p), None)


def auroc_tpr(labels: np.ndarray, values: np.ndarray, max_fpr: float = 0.01) -> tuple[float, float]:
    """Exact AUROC (``memcallback.measure.report.auroc``) and the highest TPR at FPR <= ``max_fpr``."""
    labels = np.asarray(labels, dtype=bool)
    auc = auroc(torch.from_numpy(np.asarray(values, dtype=np.float64)), torch.from_numpy(labels))
    if labels.all() or not labels.any():
        return auc, float("nan")
    fpr, tpr, _ = roc_curve(labels, values)
    return auc, float(tpr[fpr <= max_fpr].max())


@dataclass(frozen=True)
class Series:
    """A run-level signal over checkpoints, oriented (larger = more memorized)."""

    name: str
    description: str
    value: Callable[[dict], float]  # measurement record of one checkpoint -> oriented value


def threshold_from(calibration_memorizing: list[tuple[int, float, bool]],
                   calibration_generalizing: list[float]) -> tuple[float, bool]:
    """The stop threshold of one signal, from runs that are not reported.

    ``calibration_memorizing``: ``(step, oriented value, onset reached)`` per checkpoint of the memorizing
    calibration run; ``calibration_generalizing``: the oriented values of the generalizing calibration run.
    With ``g`` the largest generalizing value and ``m`` the memorizing value at its onset, the threshold is
    ``(g + m) / 2`` when ``m > g`` (the signal separates), else ``g`` (stop only beyond anything the
    generalizing run showed). Returns ``(threshold, separates)``.
    """
    g = max(calibration_generalizing)
    at_onset = [v for _, v, onset in calibration_memorizing if onset]
    if at_onset and at_onset[0] > g:
        return (g + at_onset[0]) / 2, True
    return g, False


def stop_step(steps: list[int], values: list[float], threshold: float) -> int | None:
    """First step whose oriented value exceeds ``threshold`` (patience 1; ``None``: never)."""
    return first_step(steps, [v > threshold for v in values])


def early_stopping(steps: list[int], losses: list[float], patience: int = 3) -> int | None:
    """Lightning ``EarlyStopping(monitor="val/loss", mode="min", patience, min_delta=0)`` replayed on a series."""
    best, wait = float("inf"), 0
    for step, loss in zip(steps, losses, strict=True):
        if loss < best:
            best, wait = loss, 0
        else:
            wait += 1
            if wait >= patience:
                return step
    return None
