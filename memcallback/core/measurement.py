"""What one check measures: the injectable measurement function of the monitoring core and its default.

A measurement function takes the model and a :class:`MeasureRequest` and returns a :class:`Measurement`.
The default, :func:`measure`, runs :func:`~memcallback.measure.analyze` on this rank's probes,
:func:`~memcallback.measure.sharpness_gap` and :func:`~memcallback.measure.loss_gap` on its reference images and,
when conditions are watched,
:func:`~memcallback.measure.conditional_report`. Tests, or users with their own
measurement, pass another function with the same signature to :class:`~memcallback.core.MemorizationWatch`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from memcallback.diffusion import DiffusionModel
from memcallback.measure.analysis import analyze
from memcallback.measure.conditional import ConditionalConfig, conditional_report
from memcallback.measure.loss_gap import LossGap, loss_gap
from memcallback.measure.reference import SharpnessGap, noised_image_stats, sharpness_gap
from memcallback.measure.report import SharpnessReport
from memcallback.measure.sharpness import SharpnessConfig, SharpnessStats


@dataclass(frozen=True)
class MeasureRequest:
    """Everything one measurement needs besides the model.

    Attributes:
        noise: ``[B, *data_shape]`` this rank's probe noises (the same ``B`` on every rank).
        timesteps: measurement timesteps, primary first.
        num_sampling_steps: DDIM steps from noise to sample.
        seed: seed of every random vector the solvers draw.
        sharpness: solver and score settings.
        train_data: ``[N, *data_shape]`` distinct training samples for the ground truth, or ``None``.
        warm_start: ``{t: eigenvectors}`` of the previous check on the same probes, or ``None``.
        interrupt: called between units of work; once it returns True the measurement returns what it has,
            marked partial. Collective when every rank makes the same calls (see :class:`MemorizationWatch`).
        conditions: the conditional metrics to add, or ``None``.
        reference: this rank's share of the sharpness gap's images and noise, or ``None``.
        loss_reference: this rank's share of the loss gap's images and noise, or ``None``.
        null: this rank's share of the flag's null images and their noise, or ``None``.
        measure_probes: sample and measure the probes (with the sharpness gap and the conditional metrics);
            ``False`` at a loss-gap check (the governor's, or off the ``ProbeConfig.every_n_checks`` cycle): the
            loss gap only.
        labels_only: with ``measure_probes``, sample the probes and label them against ``train_data`` only (no
            sharpness, sharpness gap, null or conditional metrics): a light check of the copy rate.
    """

    noise: Tensor
    timesteps: list[int]
    num_sampling_steps: int
    seed: int
    sharpness: SharpnessConfig
    train_data: Tensor | None = None
    warm_start: dict[int, Tensor] | None = None
    interrupt: Callable[[], bool] | None = None
    conditions: ConditionalConfig | None = None
    reference: ReferenceImages | None = None
    loss_reference: ReferenceImages | None = None
    null: NullImages | None = None
    measure_probes: bool = True
    labels_only: bool = False


@dataclass(frozen=True)
class ReferenceImages:
    """One rank's share of the images of a gap (:func:`~memcallback.measure.sharpness_gap`,
    :func:`~memcallback.measure.loss_gap`).

    Attributes:
        train: ``[n, *data_shape]`` training images.
        heldout: ``[n, *data_shape]`` held-out images.
        noise: ``[n, ...]`` the noise of both, this rank's rows of one draw for the whole set (``[n, *data_shape]``
            for the sharpness gap, ``[n, K, *data_shape]`` for the loss gap's ``K`` noise levels).
    """

    train: Tensor
    heldout: Tensor
    noise: Tensor


@dataclass(frozen=True)
class NullImages:
    """One rank's share of the held-out images whose scores are the flag's null distribution
    (:mod:`~memcallback.measure.null`).

    Attributes:
        images: ``[n, *data_shape]`` held-out images.
        noise: ``[n, *data_shape]`` their noise, this rank's rows of one draw for the whole set.
    """

    images: Tensor
    noise: Tensor


@dataclass
class Measurement:
    """What a measurement function returns.

    Attributes:
        report: this rank's :class:`~memcallback.measure.SharpnessReport` (its ``partial`` flag included), ``None``
            when the request did not measure the probes.
        conditional: the conditional metrics as ``ConditionalReport.summary()`` keys (identical on every rank:
            same weights, same noises), empty when no conditions are watched.
        reference: this rank's sharpness gap (``None`` when no reference was requested or the probes'
            measurement was cut short).
        loss_gap: this rank's denoising errors of the loss gap (``None`` when not requested).
        null: this rank's statistics at the null images (``None`` when not requested or the probes' measurement
            was cut short).
    """

    report: SharpnessReport | None
    conditional: dict[str, float]
    reference: SharpnessGap | None = None
    loss_gap: LossGap | None = None
    null: SharpnessStats | None = None


#: The signature of a measurement function.
MeasureFn = Callable[[DiffusionModel, MeasureRequest], Measurement]


def measure(model: DiffusionModel, request: MeasureRequest) -> Measurement:
    """The default measurement: the denoising errors of the loss gap first (cheap, and never cut short), then
    :func:`~memcallback.measure.analyze` of this rank's probes, the sharpness gap of its reference images and the
    statistics at its null images at the primary timestep (unless the probes were cut short) and the conditional
    metrics of every watched condition (the paper's ``||H^D s^D||`` at the first sampling step); with
    ``measure_probes=False`` the loss gap only, with ``labels_only`` the loss gap and the probes' labels."""
    losses = _loss_gap(model, request.loss_reference)
    if not request.measure_probes:
        return Measurement(report=None, conditional={}, loss_gap=losses)
    report = analyze(model, noise=request.noise, timesteps=request.timesteps, sigmas=(), config=request.sharpness,
                     num_sampling_steps=request.num_sampling_steps, seed=request.seed, train_data=request.train_data,
                     warm_start=request.warm_start, interrupt=request.interrupt, labels_only=request.labels_only)
    if request.labels_only:
        return Measurement(report=report, conditional={}, loss_gap=losses)
    gap = None
    if request.reference is not None and not report.partial:
        ref = request.reference
        gap = sharpness_gap(model, ref.train, ref.heldout, request.timesteps[0], request.sharpness, seed=request.seed,
                            interrupt=request.interrupt, noise=ref.noise)
    null = None
    if request.null is not None and not report.partial:
        null = noised_image_stats(model, request.null.images, request.null.noise, request.timesteps[0],
                                  request.sharpness, seed=request.seed, interrupt=request.interrupt)
    conditional: dict[str, float] = {}
    if request.conditions is not None:
        labels = torch.tensor(request.conditions.labels, dtype=torch.long, device=request.noise.device)
        conditional = conditional_report(model, labels, num_samples_per_cond=request.conditions.num_samples_per_cond,
                                         num_generations=request.conditions.num_generations,
                                         seed=request.seed).summary()
    return Measurement(report=report, conditional=conditional, reference=gap, loss_gap=losses, null=null)


def _loss_gap(model: DiffusionModel, reference: ReferenceImages | None) -> LossGap | None:
    """The loss gap of this rank's images (``None`` without them)."""
    if reference is None:
        return None
    return loss_gap(model, reference.train, reference.heldout, num_levels=reference.noise.shape[1],
                    noise=reference.noise)


def is_sharded(model: object) -> bool:
    """Whether ``model`` holds sharded parameters (FSDP2 ``DTensor`` or FSDP1 wrapped modules), i.e. whether its
    forward is a collective that every rank must call in step."""
    if not isinstance(model, nn.Module):
        return False
    from torch.distributed.fsdp import FullyShardedDataParallel

    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch < 2.5
        from torch.distributed._tensor import DTensor

    return (any(isinstance(p, DTensor) for p in model.parameters())
            or any(isinstance(m, FullyShardedDataParallel) for m in model.modules()))


def fixed_call_count(sharpness: SharpnessConfig, dim: int) -> bool:
    """Whether a measurement makes a number of network calls that does not depend on the data.

    Sampling, the dense Jacobian, the trace and asymmetry probes always do, and so does a Krylov solver with a
    fixed budget (``krylov_steps``); run to ``tol`` instead (``krylov_steps=None``) it stops as soon as every
    wanted eigenvalue converged, which depends on the probes.
    """
    return sharpness.use_dense(dim) or sharpness.krylov_steps is not None
