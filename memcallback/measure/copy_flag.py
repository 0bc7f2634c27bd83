r"""The default per-sample flag: a copy by the ground truth's rule, at a rate stated from held-out data.

A generated sample ``x`` is tested against the distinct training images by its nearest-neighbour distance ratio
``r(x) = d(x, NN1) / d(x, NN2)``, the statistic of the ground truth (:func:`memorization_labels`), which calls ``x``
a copy when ``r(x) < 1/3`` (:data:`COPY_RATIO`). What ``r`` looks like for a sample that is *not* derived from a
training image is measured once, at setup, on held-out images: they were never trained on, so their ratios
``r(y_1), ..., r(y_n)`` against the same training images are a sample of the statistic's null distribution. A
sample is flagged when it is a copy by that rule *and* its ratio is lower than the conformal quantile of the
null::

    flagged(x) = r(x) < min(r_(j), 1/3),   j = floor((n + 1) * fpr),

with ``r_(1) <= ... <= r_(n)`` the sorted held-out ratios. When ``x`` is exchangeable with the held-out images
(a model that generalizes, whose samples are draws from the data distribution independent of which images it was
trained on), ``P(flagged) <= P(r(x) < r_(j)) <= j / (n + 1) <= fpr`` (split conformal prediction; Vovk et al.
2005, Angelopoulos & Bates 2021). The null is a property of the data alone: it does not change as the model
trains, so it is measured once and costs nothing at the checks.

The two bounds do different work. The conformal quantile alone is wider than a copy where the data set's novel
images all have ratios near 1 (few, well-separated training images: blends and partial copies at ``r = 0.6`` lie
below it), so its flagged fraction counted 2-4 times the copy rate on the transfer study's faces and gray images
(docs/transfer/constants.md, amendment 3); the 1/3 rule alone would flag never-trained images where the data
hold near-duplicates (overlapping photo patches, whose held-out quantile is 0.23), so it keeps the stated rate.
Without held-out data there is no null to state a rate from, and the flag is the 1/3 rule alone
(:meth:`CopyFlag.copy_rule`, ``fpr`` NaN).

``fpr`` needs ``n >= ceil(1 / fpr) - 1`` held-out images. With fewer the test runs at the lowest rate they
support, ``1 / (n + 1)`` (the quantile is the smallest held-out ratio), and says so (:attr:`CopyFlag.fpr`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from memcallback.measure.ground_truth import COPY_RATIO, memorization_labels
from memcallback.measure.null import min_null_size

__all__ = ["CopyFlag", "copy_flag", "lower_conformal_threshold"]


def lower_conformal_threshold(null_values: Tensor, fpr: float) -> float:
    """The value under which a sample is flagged: the ``floor((n + 1) fpr)``-th smallest of ``n`` null values.

    Args:
        null_values: ``[n]`` values of the statistic on points known to be null; non-finite ones are left out.
        fpr: the false-positive rate, in (0, 1).

    Returns:
        The threshold (flag ``value < threshold``); ``-inf`` (nothing flagged) when ``(n + 1) fpr < 1``.
    """
    if not 0 < fpr < 1:
        raise ValueError(f"fpr must be in (0, 1), got {fpr!r}")
    values = null_values.detach().double().flatten().cpu()
    values = values[torch.isfinite(values)].sort().values
    rank = math.floor((len(values) + 1) * fpr + 1e-9)
    return -math.inf if rank < 1 else values[rank - 1].item()


@dataclass(frozen=True)
class CopyFlag:
    """The flag's threshold on the distance ratio, and the false-positive rate it holds.

    Attributes:
        null_ratio: the held-out images' conformal quantile at ``fpr`` (``inf`` without held-out images).
        fpr: the rate at which a sample exchangeable with the held-out images is flagged, at most
            (``max(fpr asked, 1 / (n + 1))``; NaN without held-out images: no rate can be stated).
        num_null: the held-out images the quantile was taken from (0: none).
    """

    null_ratio: float
    fpr: float
    num_null: int

    @classmethod
    def copy_rule(cls) -> CopyFlag:
        """The flag without held-out data: a copy by the ground truth's rule, ``r < 1/3``, at no stated rate."""
        return cls(null_ratio=math.inf, fpr=math.nan, num_null=0)

    @property
    def ratio(self) -> float:
        """A sample is flagged when its distance ratio is below this: ``min(null_ratio, 1/3)``."""
        return min(self.null_ratio, COPY_RATIO)

    def __call__(self, distance_ratio: Tensor) -> Tensor:
        """``[B]`` bool: which samples are flagged, from their distance ratios."""
        return distance_ratio < self.ratio


def copy_flag(heldout: Tensor, train: Tensor, fpr: float) -> CopyFlag:
    """The flag from held-out images' distance ratios against the training images.

    Args:
        heldout: ``[n, *shape]`` images never trained on, ``n >= 1``.
        train: ``[N, *shape]`` the distinct training images, ``N >= 2``, on the same device.
        fpr: the false-positive rate asked for, in (0, 1); with fewer than ``ceil(1 / fpr) - 1`` held-out images
            the flag holds ``1 / (n + 1)`` instead.

    Returns:
        The :class:`CopyFlag`.
    """
    if not 0 < fpr < 1:
        raise ValueError(f"fpr must be in (0, 1), got {fpr!r}")
    null = memorization_labels(heldout, train).distance_ratio
    n = len(null)
    rate = fpr if n >= min_null_size(fpr) else 1.0 / (n + 1)
    return CopyFlag(null_ratio=lower_conformal_threshold(null, rate), fpr=rate, num_null=n)
