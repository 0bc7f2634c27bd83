"""Conditional memorization metrics: the paper's ``||H^D s^D||`` and Wen et al.'s ``||s^D||``.

For a conditional model with classifier-free guidance, at a state ``x`` and timestep ``t``
(``s(x, c) = -eps_hat(x, t, c) / sigma_t``, ``empty`` the null condition)::

    s^D(x) = s(x, c) - s(x, empty)                 the vector that drives guidance
    H^D(x) = d s^D / dx = H(x, c) - H(x, empty)    the difference of the two Hessians of log p_t
    Wen et al. 2024:     ||s^D(x)||                (their ||eps(x, c) - eps(x, empty)|| is sigma_t ||s^D||)
    Jeon et al. (paper): ||H^D(x) s^D(x)||         one forward-mode product (JVP), no eigensolve

The paper evaluates both at the first sampling step, ``t = T-1`` at the initial noise ``x_T``, where the
shared ``-I`` part of the two Hessians cancels; each condition's value is the mean of the unsquared norms
over ``n`` generations (initial noises). For a Gaussian with equal means and commuting covariances,
``E||s^D||^2 = sum_i (l_i - l_ic)^2 / l_ic`` and ``E||H^D s^D||^2 = sum_i (l_i - l_ic)^4 / l_ic`` (eigenvalues
``l`` of the two Hessians): the paper's metric raises the eigenvalue gap to the 4th power instead of the 2nd.

The paper and its code use the raw norms (the code the unsquared ``||H^D s^D||``, the paper writes it squared:
same ranking). We report the raw norms and, as ``sharpness.py`` does for ``||s||`` and ``||J s||``, their
dimensionless forms ``sigma_t ||s^D|| = ||eps_c - eps_empty||`` and ``sigma_t^3 ||H^D s^D||``. At one fixed
``t`` both forms rank samples identically; the normalized ones are comparable across timesteps.

Pure torch: nothing here knows about Lightning.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from memcallback.arguments import is_int, require
from memcallback.diffusion import DiffusionModel, check_model, ddim_sample, score
from memcallback.measure import names
from memcallback.measure.analysis import measurement_mode, model_device_dtype, probe_noise
from memcallback.measure.ground_truth import MemorizationLabels, memorization_labels
from memcallback.measure.report import auroc
from memcallback.measure.sharpness import SharpnessConfig, SharpnessStats, measure_sharpness

__all__ = ["ConditionalConfig", "ConditionalMetrics", "ConditionalReport", "conditional_metrics",
           "conditional_report"]


@dataclass(frozen=True)
class ConditionalConfig:
    """Which conditions a monitor watches with the conditional metrics, and with how many noises.

    Args:
        labels: the conditions (class labels, ints >= 0) measured at every check, e.g. ``(0, 9)``.
        num_samples_per_cond: noises ``S`` per condition.
        num_generations: generations ``G`` averaged per noise (the paper's 1 or 4).
    """

    labels: Sequence[int]
    num_samples_per_cond: int = 16
    num_generations: int = 1

    def __post_init__(self) -> None:
        labels = self.labels
        require(not isinstance(labels, (str, bytes)) and isinstance(labels, Sequence) and len(labels) > 0
                and all(is_int(c) and c >= 0 for c in labels), "labels", labels,
                "a non-empty list of class labels (ints >= 0), e.g. [0, 9]")
        object.__setattr__(self, "labels", tuple(labels))
        for name in ("num_samples_per_cond", "num_generations"):
            require(is_int(getattr(self, name)) and getattr(self, name) >= 1, name, getattr(self, name),
                    "an int >= 1")


@dataclass(frozen=True)
class ConditionalMetrics:
    """Per-row conditional metrics at one timestep.

    Attributes:
        timestep: the diffusion timestep ``t``.
        sigma: ``sigma_t``.
        sd_norm: ``[B]`` Wen et al.'s ``||s^D||`` (raw).
        hds: ``[B]`` the paper's ``||H^D s^D||`` (raw, unsquared as in the official code).
    """

    timestep: int
    sigma: float
    sd_norm: Tensor
    hds: Tensor

    @property
    def sd_norm_normalized(self) -> Tensor:
        """``sigma_t ||s^D|| = ||eps(x, c) - eps(x, empty)||``, Wen et al.'s per-step quantity."""
        return self.sigma * self.sd_norm

    @property
    def hds_normalized(self) -> Tensor:
        """``sigma_t^3 ||H^D s^D||`` (dimensionless, like ``SharpnessStats.hs_norm``)."""
        return self.sigma**3 * self.hds


def _check_conditional(model: DiffusionModel) -> None:
    if getattr(model, "conditional", None) is False:
        raise ValueError(f"{type(model).__name__} is unconditional (conditional=False): the conditional metrics "
                         "compare s(x, c) with s(x, empty) and need a model trained with conditions.")


def _check_timestep(model: DiffusionModel, t: int) -> int:
    num = model.schedule.num_timesteps
    if not (is_int(t) and 0 <= t < num):
        raise ValueError(f"timestep={t!r} is invalid: expected an int in [0, {num - 1}].")
    return t


def conditional_metrics(
    model: DiffusionModel, x: Tensor, timestep: int, cond: Tensor, *, chunk_size: int | None = None
) -> ConditionalMetrics:
    """Wen et al.'s ``||s^D||`` and the paper's ``||H^D s^D||`` at the states ``x`` with row-aligned ``cond``.

    ``s^D`` is one guided pair of forward passes; ``H^D s^D`` is one forward-mode product
    ``torch.func.jvp(x -> s^D(x), (x,), (s^D(x),))`` with the tangent ``s^D`` detached, batched over the rows
    (rows must be independent: no BatchNorm in train mode; the model is put in eval mode here). Works under
    ``torch.no_grad()`` and ``torch.inference_mode()``; the model's train/eval modes and the global RNG are
    restored.

    Args:
        model: a conditional :class:`~memcallback.DiffusionModel` (``model_output(x, t, cond=None)`` with
            ``None`` the null condition).
        x: ``[B, *data_shape]`` states ``x_t``.
        timestep: the integer timestep ``t`` of the states.
        cond: ``[B, ...]`` conditions, row ``i`` for ``x[i]`` (class labels ``[B]`` for the reference networks).
        chunk_size: at most this many rows per forward (``None``: all at once).

    Returns:
        :class:`ConditionalMetrics` with ``[B]`` tensors.

    Raises:
        ValueError: on an unconditional model, a model whose output ignores ``cond``, mismatched shapes or
            an invalid timestep.
    """
    model = check_model(model)
    _check_conditional(model)
    t = _check_timestep(model, timestep)
    if not isinstance(x, Tensor) or tuple(x.shape[1:]) != tuple(model.data_shape) or x.shape[0] < 1:
        raise ValueError(f"x must have shape [B, *{tuple(model.data_shape)}] with B >= 1, got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}.")
    if not isinstance(cond, Tensor) or cond.dim() < 1 or cond.shape[0] != x.shape[0]:
        raise ValueError(f"cond must be a tensor [B, ...] with one condition per row of x (B={x.shape[0]}), got "
                         f"{tuple(cond.shape) if isinstance(cond, Tensor) else type(cond).__name__}.")
    if chunk_size is not None and not (is_int(chunk_size) and chunk_size >= 1):
        raise ValueError(f"chunk_size={chunk_size!r} is invalid: expected None or an int >= 1.")
    sigma = model.schedule.sigma(t, torch.float64).item()
    step = chunk_size or x.shape[0]
    sd_norms, hds_norms = [], []
    with measurement_mode(model):
        for start in range(0, x.shape[0], step):
            rows = slice(start, start + step)
            sd_norm, hds = _metrics_block(model, x[rows].detach().clone(), t, cond[rows].clone())
            sd_norms.append(sd_norm)
            hds_norms.append(hds)
    sd_norm = torch.cat(sd_norms)
    if not bool((sd_norm > 0).any()):
        raise ValueError(f"s(x, c) == s(x, empty) for every row: {type(model).__name__} ignores its condition "
                         "(an unconditional model?) or every condition given is the null one.")
    return ConditionalMetrics(timestep=t, sigma=sigma, sd_norm=sd_norm, hds=torch.cat(hds_norms))


def _metrics_block(model: DiffusionModel, x: Tensor, t: int, cond: Tensor) -> tuple[Tensor, Tensor]:
    def difference(z: Tensor) -> Tensor:
        return score(model, z, t, cond) - score(model, z, t, None)

    with torch.no_grad():  # forward-mode AD needs no reverse graph
        sd = difference(x)
        _, hds = torch.func.jvp(difference, (x,), (sd,))
    return sd.flatten(1).norm(dim=1).float(), hds.flatten(1).norm(dim=1).float()


@dataclass
class ConditionalReport:
    """The result of :func:`conditional_report`.

    Rows are ordered by condition, then sample: sample ``j`` of condition ``c`` is row ``c * S + j``
    (``S = num_samples_per_cond``). Per-sample values are means over the ``G`` generations.

    Attributes:
        timestep: the measurement timestep ``t`` (``T-1`` by default: the first sampling step, at ``x_T``).
        sigma: ``sigma_t``.
        conditions: ``[C, ...]`` the conditions measured.
        cond_index: ``[C*S]`` index into ``conditions`` of each sample.
        hds_per_generation: ``[C*S, G]`` the paper's ``||H^D s^D||`` per generation.
        sd_norm_per_generation: ``[C*S, G]`` Wen et al.'s ``||s^D||`` per generation.
        samples: ``[C*S, G, *shape]`` the guided DDIM samples from the same noises (when sampling was needed).
        labels: nearest-neighbour ground truth of ``samples`` flattened to ``C*S*G`` rows (with ``train_data``).
        spectra: ``{condition index: SharpnessStats}`` of the conditional Hessian ``d s(x, c) / dx`` at the
            measurement states of that condition (rows ordered sample, then generation), with ``spectrum``.
        seconds: wall time.
    """

    timestep: int
    sigma: float
    conditions: Tensor
    cond_index: Tensor
    hds_per_generation: Tensor
    sd_norm_per_generation: Tensor
    samples: Tensor | None = None
    labels: MemorizationLabels | None = None
    spectra: dict[int, SharpnessStats] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def hds(self) -> Tensor:
        """``[C*S]`` the paper's metric, mean of ``||H^D s^D||`` over the generations."""
        return self.hds_per_generation.mean(dim=1)

    @property
    def sd_norm(self) -> Tensor:
        """``[C*S]`` Wen et al.'s metric, mean of ``||s^D||`` over the generations."""
        return self.sd_norm_per_generation.mean(dim=1)

    def per_sample(self) -> dict[str, Tensor]:
        """``{name: [C*S] float tensor}``: ``hds``, ``sd_norm``, their normalized forms ``hds_normalized``
        (``sigma^3 ||H^D s^D||``) and ``sd_norm_normalized`` (``sigma ||s^D||``), and with ground truth
        ``nn_rate`` (the fraction of the sample's generations that are near copies)."""
        values = (self.hds, self.sd_norm, self.sigma**3 * self.hds, self.sigma * self.sd_norm)
        out = dict(zip(names.CONDITIONAL, values, strict=True))
        if self.labels is not None:
            out[names.NN_RATE] = self.labels.copied.float().view(self.hds_per_generation.shape).mean(dim=1)
        return out

    def per_condition(self) -> dict[str, Tensor]:
        """``{name: [C]}``: the mean of every :meth:`per_sample` entry over each condition's samples and, with
        ``spectra``, the mean of every ``SharpnessStats.scalars()`` entry (e.g. ``mu_max``, ``min_mu``)."""
        num = self.conditions.shape[0]
        counts = torch.bincount(self.cond_index, minlength=num).float()
        out = {name: torch.zeros(num).index_add_(0, self.cond_index, v.cpu().float()) / counts
               for name, v in self.per_sample().items()}
        if self.spectra:
            names = self.spectra[0].scalars().keys()
            out.update({f"spectrum/{name}": torch.stack([self.spectra[c].scalars()[name].mean().cpu()
                                                         for c in range(num)]) for name in names})
        return out

    def auroc(self, memorized_conditions: Sequence[int]) -> dict[str, float]:
        """AUROC of ``hds`` and ``sd_norm`` separating the samples of the given condition indices from the rest
        (NaN when one side is empty)."""
        positive = torch.isin(self.cond_index, torch.as_tensor(list(memorized_conditions), dtype=torch.long))
        return {"hds": auroc(self.hds, positive), "sd_norm": auroc(self.sd_norm, positive)}

    def summary(self) -> dict[str, float]:
        """Scalars for a logger: the mean of every :meth:`per_sample` entry over all samples, the same per
        condition as ``cond{c}/{name}`` (and ``cond{c}/spectrum/{name}``), ``sharpest_condition`` (the index
        with the largest mean ``hds``: the condition most likely memorized) and ``seconds``."""
        out = {name: v.mean().item() for name, v in self.per_sample().items()}
        per_condition = self.per_condition()
        for name, values in per_condition.items():
            out.update({names.of_condition(c, name): v.item() for c, v in enumerate(values)})
        out[names.SHARPEST_CONDITION] = float(per_condition["hds"].argmax().item())
        out[names.SECONDS] = self.seconds
        return out


def conditional_report(
    model: DiffusionModel,
    cond: Tensor,
    *,
    num_samples_per_cond: int = ConditionalConfig.num_samples_per_cond,
    num_generations: int = ConditionalConfig.num_generations,
    seed: int = 0,
    timestep: int | None = None,
    guidance_scale: float = 1.0,
    num_sampling_steps: int = 50,
    train_data: Tensor | None = None,
    spectrum: SharpnessConfig | None = None,
    chunk_size: int | None = None,
) -> ConditionalReport:
    """Measure the conditional metrics for every condition in ``cond``; see the module docstring for formulas.

    Draws ``num_samples_per_cond * num_generations`` initial noises ``x_T`` from ``seed`` and uses the same
    noises for every condition (the official code resets its generation seed per prompt). With the default
    ``timestep=None`` the metrics are taken at the first sampling step, ``t = T-1`` at ``x_T``, as in the paper;
    another ``timestep`` is reached by guided DDIM from ``x_T`` (``num_sampling_steps``, ``guidance_scale``).
    Each sample's metric is the mean over its ``num_generations`` noises (the paper's ``n``).

    Args:
        model: a conditional :class:`~memcallback.DiffusionModel` (an ``nn.Module`` is put in eval mode and
            restored; works under ``torch.no_grad()`` / ``torch.inference_mode()``).
        cond: ``[C, ...]`` the conditions to measure (e.g. ``torch.arange(10)`` for ten class labels).
        num_samples_per_cond: samples ``S`` per condition.
        num_generations: generations ``G`` averaged per sample.
        seed: seed of the noises and of the spectrum's random vectors.
        timestep: measurement timestep; ``None`` for ``T-1``.
        guidance_scale: classifier-free guidance weight of the DDIM trajectories (the metrics themselves
            compare ``s(x, c)`` with ``s(x, empty)`` and do not depend on it).
        num_sampling_steps: DDIM steps of the trajectories (the measurement timestep is added to the grid).
        train_data: ``[N, *data_shape]`` unique training samples: the DDIM samples are then generated and
            labelled by the nearest-neighbour ratio test (``labels``, ``nn_rate``).
        spectrum: also measure, per condition, the spectrum of the conditional Hessian ``d s(x, c) / dx`` at the
            same states with :func:`~memcallback.measure.sharpness.measure_sharpness` (dense or Lanczos).
        chunk_size: at most this many rows per forward of the metrics.

    Returns:
        A :class:`ConditionalReport`.

    Raises:
        ValueError: on an unconditional model, empty or badly shaped ``cond``, or arguments out of range.
    """
    model = check_model(model)
    _check_conditional(model)
    for name, value in (("num_samples_per_cond", num_samples_per_cond), ("num_generations", num_generations),
                        ("num_sampling_steps", num_sampling_steps)):
        if not (is_int(value) and value >= 1):
            raise ValueError(f"{name}={value!r} is invalid: expected an int >= 1.")
    if not isinstance(cond, Tensor) or cond.dim() < 1 or cond.shape[0] < 1:
        raise ValueError(f"cond must be a tensor [C, ...] of C >= 1 conditions, got "
                         f"{tuple(cond.shape) if isinstance(cond, Tensor) else type(cond).__name__}.")
    shape = tuple(model.data_shape)
    if train_data is not None and tuple(train_data.shape[1:]) != shape:
        raise ValueError(f"train_data must have shape [N, *{shape}], got {tuple(train_data.shape)}.")
    t = model.schedule.num_timesteps - 1 if timestep is None else _check_timestep(model, timestep)
    start = time.perf_counter()
    device, dtype = model_device_dtype(model)
    num_cond, per_cond = cond.shape[0], num_samples_per_cond * num_generations
    noise = probe_noise(per_cond, shape, seed, dtype).to(device)
    x_start = noise.repeat(num_cond, *(1,) * len(shape))  # row c * S * G + j * G + g
    cond_rows = cond.to(device).repeat_interleave(per_cond, dim=0)
    samples = None
    with measurement_mode(model):
        x_t = x_start
        if t != model.schedule.num_timesteps - 1 or train_data is not None:
            out = ddim_sample(model, x_start, num_sampling_steps, cond=cond_rows, guidance_scale=guidance_scale,
                              record=[t])
            x_t, samples = out.trajectory[t], out.sample.detach()
        metrics = conditional_metrics(model, x_t, t, cond_rows, chunk_size=chunk_size)
        spectra = {}
        if spectrum is not None:
            generator = torch.Generator().manual_seed(seed + 1)
            for c in range(num_cond):
                rows = slice(c * per_cond, (c + 1) * per_cond)
                spectra[c] = measure_sharpness(_bound_score(model, t, cond[c : c + 1].to(device)), x_t[rows], t,
                                               metrics.sigma, spectrum, generator=generator)
    grid = (num_cond * num_samples_per_cond, num_generations)
    report = ConditionalReport(
        timestep=t, sigma=metrics.sigma, conditions=cond, cond_index=torch.arange(num_cond).repeat_interleave(
            num_samples_per_cond), hds_per_generation=metrics.hds.cpu().view(grid),
        sd_norm_per_generation=metrics.sd_norm.cpu().view(grid), spectra=spectra,
        samples=None if samples is None else samples.view(*grid, *shape),
    )
    if train_data is not None and samples is not None:
        report.labels = memorization_labels(samples, train_data.to(samples))
    report.seconds = time.perf_counter() - start
    return report


def _bound_score(model: DiffusionModel, t: int, cond: Tensor) -> Callable[[Tensor], Tensor]:
    """``x [n, *shape] -> s(x, cond)`` with one condition ``cond [1, ...]`` broadcast to every row.

    Broadcasting (rather than closing over a row-aligned ``[B]`` condition) keeps the function valid for any
    number of rows: the Lanczos path calls it on rows repeated ``m`` times, the dense path on single rows
    ``x_i[None]`` under ``vmap``.
    """
    return lambda x: score(model, x, t, cond.expand(x.shape[0], *cond.shape[1:]))
