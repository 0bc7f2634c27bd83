"""The result of one measurement (:class:`SharpnessReport`) and the AUROC of a statistic against labels."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from memcallback.measure.ground_truth import MemorizationLabels
from memcallback.measure.sharpness import SharpnessStats


@dataclass
class SharpnessReport:
    """The result of :func:`analyze`.

    Attributes:
        stats: ``{t: SharpnessStats}`` per measured timestep, in the order requested; the first is primary.
        samples: ``[B, *shape]`` the generated samples the probes led to.
        labels: nearest-neighbour ground truth per sample (when training data was given).
        seconds: wall time of the measurement.
    """

    stats: dict[int, SharpnessStats]
    samples: Tensor
    labels: MemorizationLabels | None = None
    seconds: float = 0.0
    auroc: dict[int, float] = field(default_factory=dict)

    @property
    def primary(self) -> SharpnessStats:
        """The statistics at the first (primary) timestep: the ones the score and the stop rule use."""
        return next(iter(self.stats.values()))

    def per_sample(self) -> dict[str, Tensor]:
        """``{name: [B] float tensor}``: every per-sample statistic at the primary timestep (plain names)
        and at every timestep (``t{t}/name``), the flag as ``flagged_fraction`` and the solver status as
        ``converged_fraction`` (so their means are fractions), and with ground truth ``nn_rate``."""
        out: dict[str, Tensor] = {}
        for i, (t, stats) in enumerate(self.stats.items()):
            values = stats.scalars()
            values["flagged_fraction"] = stats.memorized.float()
            values["converged_fraction"] = stats.converged.float()
            if i == 0:
                out.update(values)
            out.update({f"t{t}/{name}": v for name, v in values.items()})
        if self.labels is not None:
            out["nn_rate"] = self.labels.memorized.float()
        return out

    def summary(self) -> dict[str, float]:
        """Scalar summary: the sample mean of every entry of :meth:`per_sample`, the AUROC of the score
        against the ground truth (``auroc``, ``t{t}/auroc``) when available, and ``seconds``."""
        out = {name: v.mean().item() for name, v in self.per_sample().items()}
        for i, (t, value) in enumerate(self.auroc.items()):
            if i == 0:
                out["auroc"] = value
            out[f"t{t}/auroc"] = value
        out["seconds"] = self.seconds
        return out


def auroc(values: Tensor, positive: Tensor) -> float:
    r"""Area under the ROC curve of any real-valued statistic ``values`` for the binary labels ``positive``.

    The Mann-Whitney form, exact with ties (a tie counts one half):

        AUROC = (sum of the ranks of the positives - P (P + 1) / 2) / (P N)

    with ranks of ``values`` among all samples (ties get their average rank), ``P`` positives and ``N``
    negatives. Unlike a logit-based implementation it needs no rescaling of ``values`` into ``[0, 1]``:
    raw norms (``||H^D s^D||`` in the hundreds) and negative values rank as they are. NaN when only one
    class is present.
    """
    positive = positive.bool().flatten().cpu()
    values = values.detach().double().flatten().cpu()
    num_pos = int(positive.sum())
    num_neg = positive.numel() - num_pos
    if num_pos == 0 or num_neg == 0:
        return float("nan")
    _, inverse, counts = torch.unique(values, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    ranks = (ends - (counts.double() - 1) / 2)[inverse]  # 1-based average ranks
    u = ranks[positive].sum() - num_pos * (num_pos + 1) / 2
    return (u / (num_pos * num_neg)).item()
