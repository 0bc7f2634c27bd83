r"""An opt-in calibration of the per-sample flag: the score's null distribution at noised held-out images.

A memorization score has no level that means "copy" on every data set: its scale depends on the data, the
network and how far training has come. What does carry over is a comparison *at the same check*: held-out images
are never copies, so the scores at their noised states ``alpha_t y_j + sigma_t z_j`` (the measurement noise level
of the probes, the same network) are a sample of the score's distribution at points that are not memorized. A
probe whose score exceeds the conformal quantile of that sample is flagged:

    flagged_i = score_i > s_(k),   k = ceil((n + 1) (1 - fpr)),

with ``s_(1) <= ... <= s_(n)`` the ``n`` null scores. When a probe's state is exchangeable with the null states,
``P(flagged) <= fpr`` (split conformal prediction; Vovk et al. 2005, Angelopoulos & Bates 2021).

That premise is the weak point, and it failed where it was tested: the sampler's own states at the measurement
noise level are not noised data points, and on a generalizing textures model they scored above the null on 8-59%
of the probes at a nominal 2% (docs/transfer/constants.md). The null is therefore opt-in
(``ProbeConfig.null_images``); the stated rate holds for states that *are* noised images (the sharpness gap's).
"""

from __future__ import annotations

import math
import sys

import torch
from torch import Tensor

__all__ = ["conformal_threshold", "min_null_size"]


def min_null_size(fpr: float) -> int:
    """The fewest null scores for which a conformal threshold at ``fpr`` exists: ``ceil(1 / fpr) - 1``
    (``sys.maxsize`` where ``1 / fpr`` overflows: no null set is large enough)."""
    inverse = 1.0 / fpr
    return max(1, math.ceil(inverse - 1e-12) - 1) if math.isfinite(inverse) else sys.maxsize


def conformal_threshold(null_scores: Tensor, fpr: float) -> float:
    """The score above which a sample is flagged: the ``ceil((n + 1)(1 - fpr))``-th smallest of ``n`` null scores.

    Args:
        null_scores: ``[n]`` scores at noised held-out images; non-finite values (points a cut-short measurement
            did not reach) are left out.
        fpr: the false-positive rate, in (0, 1).

    Returns:
        The threshold; ``inf`` (nothing flagged) when fewer than :func:`min_null_size` finite scores remain.
    """
    if not 0 < fpr < 1:
        raise ValueError(f"fpr must be in (0, 1), got {fpr!r}")
    values = null_scores.detach().double().flatten().cpu()
    values = values[torch.isfinite(values)].sort().values
    rank = math.ceil((len(values) + 1) * (1 - fpr) - 1e-9)
    return float("inf") if rank > len(values) else values[rank - 1].item()
