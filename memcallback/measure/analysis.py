"""One memorization measurement of a diffusion model: sample probes, measure sharpness, summarize.

:func:`analyze` is what the callback runs at every check, and what a notebook or an audit script calls
on a checkpoint: no Trainer involved.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from memcallback.arguments import is_int
from memcallback.diffusion import DiffusionModel, check_model, ddim_sample, randn, score_function
from memcallback.diffusion.attention import math_attention
from memcallback.measure.ground_truth import memorization_labels
from memcallback.measure.report import SharpnessReport
from memcallback.measure.sharpness import Interrupt, SharpnessConfig, measure_sharpness


def resolve_timesteps(model: DiffusionModel, sigmas: Sequence[float] = (), timesteps: Sequence[int] = ()) -> list[int]:
    """Measurement timesteps: explicit ``timesteps`` first, then the nearest timestep to each of ``sigmas``."""
    num = model.schedule.num_timesteps
    bad = [t for t in timesteps if not (is_int(t) and 0 <= t < num)]
    if bad:
        raise ValueError(f"timesteps {bad} are invalid: expected ints in [0, {num - 1}].")
    resolved = list(timesteps) + [model.schedule.timestep_for_sigma(float(s)) for s in sigmas]
    if not resolved:
        raise ValueError("Give at least one measurement noise level: sigmas=(0.1,) or timesteps=(27,).")
    return list(dict.fromkeys(resolved))


def probe_noise(num_samples: int, data_shape: Sequence[int], seed: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """The fixed initial noises ``x_T`` of the probe set, from a private CPU generator (same every call).

    Drawn in float32 and then cast, so a half-precision model gets the same probes, rounded, as a float32 one.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
    return randn((num_samples, *data_shape), torch.Generator().manual_seed(seed), dtype=torch.float32).to(dtype)


@contextlib.contextmanager
def measurement_mode(model: object, differentiable: bool = True) -> Iterator[None]:
    """Put ``model`` in eval mode with global RNG states untouched; restore all on exit.

    Train/eval flags are captured and restored per submodule (a frozen submodule stays frozen), the
    measurement leaves no ``.grad`` on parameters, and it also works when called under
    ``torch.inference_mode()`` (as in ``trainer.validate()``). With ``differentiable`` (the default) gradients
    are enabled and attention runs on PyTorch's math backend, since fused attention kernels cannot be
    differentiated twice (see :func:`memcallback.adapters.math_attention`); without, gradients are off and
    attention keeps its fused kernels (forward passes only).
    """
    is_module = isinstance(model, nn.Module)
    modules = list(model.modules()) if is_module else []
    modes = [m.training for m in modules]
    params = list(model.parameters()) if is_module else []
    grads = [p.grad for p in params]
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    try:
        grad = torch.enable_grad() if differentiable else torch.no_grad()
        attention = math_attention() if differentiable else contextlib.nullcontext()
        with torch.random.fork_rng(devices=devices), torch.inference_mode(False), grad, attention:
            if is_module:
                model.eval()
            yield
    finally:
        if is_module:
            model.train(modes[0])  # runs any custom train() override (e.g. weight swaps) ...
        for m, mode in zip(modules, modes, strict=True):
            m.training = mode  # ... then restores submodules that were deliberately kept in eval mode
        for p, g in zip(params, grads, strict=True):
            p.grad = g


def analyze(
    model: DiffusionModel,
    *,
    num_samples: int = 64,
    sigmas: Sequence[float] = (0.1,),
    timesteps: Sequence[int] = (),
    config: SharpnessConfig | None = None,
    num_sampling_steps: int = 50,
    seed: int = 0,
    noise: Tensor | None = None,
    train_data: Tensor | None = None,
    warm_start: dict[int, Tensor] | None = None,
    interrupt: Callable[[], bool] | None = None,
    labels_only: bool = False,
) -> SharpnessReport:
    """Measure how sharp the learned density is around the model's own samples.

    Draws ``num_samples`` probes ``x_T`` from a fixed seed (or takes ``noise``), runs deterministic DDIM
    (unconditional: a conditional model is measured with its null condition),
    records the states ``x_t`` at the measurement timesteps and computes, per sample, the statistics of
    :class:`~memcallback.measure.sharpness.SharpnessStats` at each of them (eigenvalues of the symmetrized
    Hessian of ``log p_t`` and their normalized form ``mu = 1 + sigma^2 lambda``, the most negative one,
    trace and effective dimension ``d + sigma^2 tr H``, ``||s||^2``, ``||H s||``, asymmetry) and a
    memorization score with a flag. With ``train_data`` it adds the nearest-neighbour ground truth and
    the AUROC of the score against it.

    Args:
        model: any :class:`~memcallback.DiffusionModel` (an ``nn.Module`` is put in eval mode and restored).
        num_samples: number of probes (ignored when ``noise`` is given).
        sigmas: measurement noise levels, mapped to the nearest timesteps of the model's schedule.
        timesteps: explicit measurement timesteps (measured before those from ``sigmas``).
        config: solver and score settings (defaults: :class:`SharpnessConfig`).
        num_sampling_steps: DDIM steps (the measurement timesteps are added to the grid).
        seed: seed of the probe noise and of every random vector the solvers draw.
        noise: explicit initial noises ``[B, *data_shape]`` (e.g. a rank's shard of a probe set).
        train_data: ``[N, *data_shape]`` unique training samples for the nearest-neighbour ground truth.
        warm_start: ``{t: eigenvectors [B, k, *shape]}`` from a previous report, for the Krylov solver.
        interrupt: a time budget: called between units of work (before every DDIM step's network call,
            after every Krylov step, before each other part of a measurement). Once it returns True it is
            not called again, the measurement stops at the next point where it can still return values and
            the report has ``partial=True``: cut during sampling, ``stats`` is empty; cut during a noise
            level, that level's :class:`SharpnessStats` has ``partial=True`` (parts not reached are NaN,
            see ``SharpnessStats.products``) and later levels are missing.
        labels_only: sample the probes and label them against ``train_data`` but measure no level (``stats`` is
            empty): the copy rate for the cost of sampling.

    Returns:
        A :class:`SharpnessReport`.
    """
    model = check_model(model)
    config = config or SharpnessConfig()
    ts = resolve_timesteps(model, sigmas, timesteps)
    device, dtype = model_device_dtype(model)
    if noise is None:
        noise = probe_noise(num_samples, model.data_shape, seed, dtype)
    elif tuple(noise.shape[1:]) != tuple(model.data_shape):
        raise ValueError(f"noise must have shape [B, *{tuple(model.data_shape)}], got {tuple(noise.shape)}.")
    if labels_only and train_data is None:
        raise ValueError("labels_only=True labels the samples against train_data: give train_data.")
    if train_data is not None and tuple(train_data.shape[1:]) != tuple(model.data_shape):
        raise ValueError(f"train_data must have shape [N, *{tuple(model.data_shape)}], got {tuple(train_data.shape)}.")
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed + 1)
    stop = Interrupt(interrupt)
    noise = noise.to(device, dtype)
    stats = {}
    with measurement_mode(model):
        try:
            out = ddim_sample(_Interruptible(model, stop), noise, num_sampling_steps, record=ts)
        except _Interrupted:
            return SharpnessReport(stats={}, samples=noise, seconds=time.perf_counter() - start, partial=True)
        if not torch.isfinite(out.sample).all():
            raise FloatingPointError("The model produced non-finite values while sampling the probes; "
                                     "check the training loss and learning rate.")
        for t in () if labels_only else ts:
            if stop():
                break
            sigma = model.schedule.sigma(t, torch.float64).item()
            fn = score_function(model, t)
            v0 = None if warm_start is None else warm_start.get(t)
            stats[t] = measure_sharpness(fn, out.trajectory[t], t, sigma, config, v0=v0, generator=generator,
                                         interrupt=stop)
    report = SharpnessReport(stats=stats, samples=out.sample.detach(), partial=stop.fired)
    if train_data is not None:
        report.labels = memorization_labels(report.samples, train_data.to(report.samples))
    report.seconds = time.perf_counter() - start
    return report


class _Interrupted(Exception):
    """Raised inside the sampler when the interrupt fires (no state is measurable before sampling ends)."""


class _Interruptible:
    """``model`` as a :class:`DiffusionModel` that asks ``stop`` before every network call of the sampler."""

    def __init__(self, model: DiffusionModel, stop: Interrupt):
        self._model, self._stop = model, stop

    def __getattr__(self, name: str) -> object:
        return getattr(self._model, name)

    def model_output(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        if self._stop():
            raise _Interrupted
        return self._model.model_output(x_t, t, cond)


def model_device_dtype(model: object) -> tuple[torch.device, torch.dtype]:
    """The device and floating dtype of a module's first floating parameter (CPU float32 for other models)."""
    if isinstance(model, nn.Module):
        for p in model.parameters():
            if p.is_floating_point():
                return p.device, p.dtype
    return torch.device("cpu"), torch.float32
