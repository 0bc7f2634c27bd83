"""The result of one measurement (:class:`SharpnessReport`) and the AUROC of a statistic against labels."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from memcallback.measure import names
from memcallback.measure.ground_truth import MemorizationLabels, copy_rate_lower_bound
from memcallback.measure.sharpness import SharpnessStats


@dataclass
class SharpnessReport:
    """The result of :func:`analyze`.

    Attributes:
        stats: ``{t: SharpnessStats}`` per measured timestep, in the order requested; the first is primary.
        samples: ``[B, *shape]`` the generated samples the probes led to.
        labels: nearest-neighbour ground truth per sample (when training data was given).
        seconds: wall time of the measurement.
        partial: the measurement was cut short (``interrupt``): its values are the best it had by then.
    """

    stats: dict[int, SharpnessStats]
    samples: Tensor
    labels: MemorizationLabels | None = None
    seconds: float = 0.0
    partial: bool = False

    @property
    def primary(self) -> SharpnessStats:
        """The statistics at the first (primary) timestep: the ones the score and the stop rule use."""
        return next(iter(self.stats.values()))

    def per_sample(self) -> dict[str, Tensor]:
        """``{name: [B] float tensor}`` named by :mod:`~memcallback.measure.names`: every per-sample statistic
        at the primary timestep (plain names) and at every timestep (``t{t}/name``), the flag as
        ``flagged_fraction`` and the solver status as ``converged_fraction`` (so their means are fractions),
        and with ground truth the copy label as ``nn_rate``."""
        out: dict[str, Tensor] = {}
        for i, (t, stats) in enumerate(self.stats.items()):
            values = stats.scalars()
            values[names.FLAGGED_FRACTION] = stats.flagged.float()
            values[names.CONVERGED_FRACTION] = stats.converged.float()
            if i == 0:
                out.update(values)
            out.update({names.at_timestep(t, name): v for name, v in values.items()})
        if self.labels is not None:
            out[names.NN_RATE] = self.labels.copied.float()
        return out

    def summary(self) -> dict[str, float]:
        """Scalar summary of this report alone: :func:`summarize` of :meth:`per_sample`."""
        return summarize(self.per_sample(), list(self.stats), self.seconds)


def summarize(per_sample: dict[str, Tensor], timesteps: Sequence[int], seconds: float) -> dict[str, float]:
    """The scalar summary of a measurement, from its per-sample values (one rank's, or every rank's gathered).

    The sample mean (in float64) of every entry; when ``nn_rate`` is present, the AUROC of the memorization score
    against the copy label (``auroc`` at the primary timestep, ``t{t}/auroc`` at each) and the lower confidence
    bound of the copy rate (``nn_rate_lower``, :func:`~memcallback.measure.ground_truth.copy_rate_lower_bound`;
    NaN when a probe's label is missing, as the rate is); and ``seconds``.
    This is the only summary: :meth:`SharpnessReport.summary` and the monitor's reduction over ranks both
    call it, so their keys (:func:`~memcallback.measure.names.summary_keys`) and values agree.

    Args:
        per_sample: ``{name: [B] tensor}`` as :meth:`SharpnessReport.per_sample` returns it.
        timesteps: the measurement timesteps, primary first.
        seconds: wall time of the measurement.
    """
    out = {name: v.double().mean().item() for name, v in per_sample.items()}
    if names.NN_RATE in per_sample:
        copied = per_sample[names.NN_RATE] > 0.5
        labelled = copied.numel() > 0 and bool(torch.isfinite(per_sample[names.NN_RATE]).all())
        out[names.NN_RATE_LOWER] = (copy_rate_lower_bound(int(copied.sum()), copied.numel()) if labelled
                                    else math.nan)
        for i, t in enumerate(timesteps):
            value = auroc(per_sample[names.at_timestep(t, names.SCORE)], copied)
            if i == 0:
                out[names.AUROC] = value
            out[names.at_timestep(t, names.AUROC)] = value
    out[names.SECONDS] = seconds
    return out


def auroc(values: Tensor, positive: Tensor) -> float:
    r"""Area under the ROC curve of any real-valued statistic ``values`` for the binary labels ``positive``.

    The Mann-Whitney form, exact with ties (a tie counts one half):

        AUROC = (sum of the ranks of the positives - P (P + 1) / 2) / (P N)

    with ranks of ``values`` among all samples (ties get their average rank), ``P`` positives and ``N``
    negatives. Unlike a logit-based implementation it needs no rescaling of ``values`` into ``[0, 1]``:
    raw norms (``||H^D s^D||`` in the hundreds) and negative values rank as they are. NaN when only one
    class is present, or when a value is NaN (not measured).
    """
    positive = positive.bool().flatten().cpu()
    values = values.detach().double().flatten().cpu()
    num_pos = int(positive.sum())
    num_neg = positive.numel() - num_pos
    if num_pos == 0 or num_neg == 0 or not bool(torch.isfinite(values).all()):
        return float("nan")
    _, inverse, counts = torch.unique(values, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    ranks = (ends - (counts.double() - 1) / 2)[inverse]  # 1-based average ranks
    u = ranks[positive].sum() - num_pos * (num_pos + 1) / 2
    return (u / (num_pos * num_neg)).item()
