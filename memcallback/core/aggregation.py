"""Reduce per-sample statistics across DDP ranks with torchmetrics (fixed-shape states only)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import BinaryAUROC


class SampleMeans(Metric):
    """Global sample means of a fixed set of named per-sample statistics.

    States are a ``[F]`` vector of sums and a sample count, both reduced by ``"sum"``: exact under DDP
    whatever the shard sizes, and every rank gets the same means after :meth:`compute`.

    Args:
        names: the statistics, in a fixed order (the same on every rank).
    """

    full_state_update = False
    is_differentiable = False

    def __init__(self, names: Sequence[str], **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.names = tuple(names)
        self.add_state("sums", default=torch.zeros(len(self.names), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, values: dict[str, Tensor]) -> None:
        """Add one shard: ``values[name]`` is a ``[B]`` tensor for every name (same ``B`` for all)."""
        missing = set(self.names) - set(values)
        if missing:
            raise KeyError(f"missing statistics {sorted(missing)}")
        rows = torch.stack([values[n].detach().to(self.sums.device, torch.float64).reshape(-1) for n in self.names])
        self.sums += rows.sum(dim=1)
        self.count += rows.shape[1]

    def compute(self) -> dict[str, float]:
        """``{name: mean}`` over every sample seen on every rank."""
        means = self.sums / self.count.clamp(min=1)
        return dict(zip(self.names, means.tolist(), strict=True))


class CheckAggregator:
    """One check's statistics reduced over ranks: means of every per-sample statistic and, with ground
    truth, the AUROC of the memorization score against the nearest-neighbour label (gathered exactly).

    Every rank must call :meth:`reduce` for every check: it is collective under DDP.
    """

    def __init__(self, names: Sequence[str], device: torch.device) -> None:
        self.means = SampleMeans(names).to(device)
        self.auroc = BinaryAUROC().to(device)

    def reduce(self, per_sample: dict[str, Tensor], score: Tensor, memorized: Tensor | None) -> dict[str, float]:
        """Global summary of this check; adds ``auroc`` when ``memorized`` labels are given."""
        self.means.update(per_sample)
        out = self.means.compute()
        self.means.reset()
        if memorized is not None:
            self.auroc.update(score.detach().float().to(self.means.device), memorized.long().to(self.means.device))
            # undefined with a single class; nn_rate is already global, so every rank takes the same branch
            defined = 0 < out["nn_rate"] < 1
            out["auroc"] = self.auroc.compute().item() if defined else float("nan")
            self.auroc.reset()
        return out
