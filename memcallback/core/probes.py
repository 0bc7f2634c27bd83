"""The probe set: the fixed initial noises a monitor measures at every check, and this rank's shard of them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from memcallback.arguments import is_int, is_real, require
from memcallback.measure.analysis import probe_noise


@dataclass(frozen=True)
class ProbeConfig:
    """Which probes are measured, and where along their trajectories.

    Args:
        num_samples: probes per check (sharded over processes); the same probes at every check.
        num_sampling_steps: deterministic DDIM steps from each probe's noise ``x_T`` to its sample.
        sigmas: measurement noise levels (mapped to the nearest timesteps); the first is primary.
        timesteps: explicit measurement timesteps (placed before those from ``sigmas``).
        seed: seed of the probe noises and of all solver randomness (a private generator: the training
            job's random streams are never touched).
        reference_images: training and as many held-out images measured at the primary noise level for the
            sharpness gap (:func:`~memcallback.measure.sharpness_gap`), when both are given at setup; 0 (the
            default): off. 16 of each cost about as much as a default check on a 16x16 UNet (43 against 54
            training steps, docs/scale/cost.md).
        loss_gap_images: training and as many held-out images whose denoising errors give the relative loss gap
            (:func:`~memcallback.measure.loss_gap`), when both are given at setup; 0: off. Forward passes only:
            64 of each at its 10 noise levels cost 6.5 training steps on a 16x16 UNet (docs/scale/cost.md).
        null_images: noised held-out images (a seeded random selection, cycled with fresh noise when fewer are
            given) measured like the probes at the primary noise level, when held-out data are given at setup:
            their scores are the null distribution that calibrates the per-sample flag to
            ``SharpnessConfig.flag_fpr`` (:mod:`~memcallback.measure.null`); at least ``ceil(1 / flag_fpr) - 1``
            of them. 0 (the default): off. They cost as much as as many probes, without sampling. Opt-in: in the
            transfer study a generalizing model's sampler states scored above this null far more often than
            ``flag_fpr`` (docs/transfer/results.md).
        copy_null_images: held-out images (a seeded random selection of at most this many) whose nearest-neighbour
            distance ratios against the training images are the null of the default per-sample flag
            (:mod:`~memcallback.measure.copy_flag`), when both are given at setup: a copy is flagged only when its
            ratio is also below their conformal quantile at ``SharpnessConfig.flag_fpr``. Measured once at setup (a
            nearest-neighbour search of these images in the training set). 0: no null (copies flagged by the 1/3
            rule alone, at no stated rate).
        every_n_checks: sample and measure the probes (with the sharpness gap and the conditional metrics) at most
            at the first check and every this many checks after it; the checks between measure the loss gap only
            (and, when the stop monitors the probes' copy rate, sample and label the probes without their
            sharpness), a fraction of a full check. 1 (the default): any check may be full, as the cost governor
            (:class:`~memcallback.core.GovernorConfig`) allows. Needs the loss gap or a copy-rate monitor when > 1.
    """

    num_samples: int = 64
    num_sampling_steps: int = 50
    sigmas: Sequence[float] = (0.1,)
    timesteps: Sequence[int] = ()
    seed: int = 0
    reference_images: int = 0
    loss_gap_images: int = 64
    null_images: int = 0
    copy_null_images: int = 1000
    every_n_checks: int = 1

    def __post_init__(self) -> None:
        for name in ("num_samples", "num_sampling_steps", "every_n_checks"):
            require(is_int(getattr(self, name)) and getattr(self, name) >= 1, name, getattr(self, name), "an int >= 1")
        require(is_int(self.reference_images) and self.reference_images >= 0, "reference_images",
                self.reference_images, "an int >= 0 (0: no sharpness gap)")
        require(is_int(self.loss_gap_images) and self.loss_gap_images >= 0, "loss_gap_images",
                self.loss_gap_images, "an int >= 0 (0: no loss gap)")
        require(is_int(self.null_images) and self.null_images >= 0, "null_images", self.null_images,
                "an int >= 0 (0: the fixed flag_threshold)")
        require(is_int(self.copy_null_images) and self.copy_null_images >= 0, "copy_null_images",
                self.copy_null_images, "an int >= 0 (0: no null, the copy flag at no stated rate)")
        require(is_int(self.seed) and 0 <= self.seed < 2**63, "seed", self.seed, "an int in [0, 2**63)")
        for name, example in (("sigmas", "[0.1]"), ("timesteps", "[27]")):
            value = getattr(self, name)
            require(not isinstance(value, (str, bytes)) and isinstance(value, Sequence), name, value,
                    f"a list, e.g. {example} (or [])")
            object.__setattr__(self, name, tuple(value))
        if not self.sigmas and not self.timesteps:
            raise ValueError("Give at least one measurement noise level: sigmas=[0.1] or timesteps=[27].")
        require(all(is_real(s) and 0 < s < 1 for s in self.sigmas), "sigmas", list(self.sigmas),
                "noise levels in (0, 1), e.g. [0.1]")
        require(all(is_int(t) and t >= 0 for t in self.timesteps), "timesteps", list(self.timesteps),
                "ints in [0, num_timesteps - 1] of the model's schedule, e.g. [27]")

    @property
    def uses_heldout(self) -> bool:
        """Whether anything set here measures held-out images: the sharpness gap, the loss gap, the score null or
        the copy flag's null."""
        return any(n > 0 for n in (self.reference_images, self.loss_gap_images, self.null_images,
                                   self.copy_null_images))


@dataclass(frozen=True)
class ProbeSet:
    """This rank's shard of the probe set, padded so that every rank measures the same number of probes.

    The ``num_samples`` probes are extended cyclically to ``per_rank * world_size`` noises (``per_rank =
    ceil(num_samples / world_size)``; padding repeats the first probes), and rank ``r`` takes every
    ``world_size``-th one from ``r``. Equal
    shards give every rank the same sequence of network calls (a forward that is itself collective, as under
    FSDP, needs that); the padding probes are measured and then dropped when the values are gathered
    (:func:`~memcallback.core.distributed.gather_probes`), so the reduced values are those of the
    ``num_samples`` probes exactly, whatever the number of processes.

    Attributes:
        noise: ``[per_rank, *data_shape]`` this rank's initial noises.
        num_samples: size of the probe set before padding.
        rank: this process's rank.
        world_size: the number of processes.
    """

    noise: Tensor
    num_samples: int
    rank: int
    world_size: int

    @classmethod
    def build(cls, config: ProbeConfig, data_shape: Sequence[int], rank: int = 0, world_size: int = 1) -> ProbeSet:
        """The shard of ``rank`` among ``world_size`` processes."""
        require(is_int(world_size) and world_size >= 1, "world_size", world_size, "an int >= 1")
        require(is_int(rank) and 0 <= rank < world_size, "rank", rank, f"an int in [0, {world_size - 1}]")
        noise = shard(probe_noise(config.num_samples, data_shape, config.seed), rank, world_size)
        return cls(noise=noise, num_samples=config.num_samples, rank=rank, world_size=world_size)

    @property
    def valid(self) -> Tensor:
        """``[per_rank]`` bool: which of this rank's probes belong to the probe set (the rest is padding)."""
        index = torch.arange(self.noise.shape[0]) * self.world_size + self.rank
        return index < self.num_samples

    def digest(self) -> str:
        """A fingerprint of this rank's noises (to compare probe sets across runs and resumes)."""
        import hashlib

        return hashlib.sha256(self.noise.cpu().numpy().tobytes()).hexdigest()


def shard(values: Tensor, rank: int, world_size: int) -> Tensor:
    """Rank ``rank``'s equal share of ``values [n, ...]``: extended cyclically to ``ceil(n / W) * W`` rows
    (padding repeats the first ones), then every ``W``-th row from ``rank`` (``W = world_size``); the layout
    :func:`~memcallback.core.distributed.gather_probes` undoes."""
    per_rank = math.ceil(len(values) / world_size)
    return values[torch.arange(per_rank * world_size, device=values.device) % len(values)][rank::world_size]


def sample_rows(num_rows: int, count: int, seed: int) -> Tensor:
    """``[count]`` row indices of a set of ``num_rows``: a seeded random order, cycled when the set is smaller.

    Data sets are often stored in an order (by class, by position in an image, by source), so their first rows
    are not a sample of them; a random order is.
    """
    order = torch.randperm(num_rows, generator=torch.Generator().manual_seed(seed))
    return order[torch.arange(count) % num_rows]
