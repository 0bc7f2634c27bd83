"""Batched DDIM / ancestral DDPM sampling with explicit randomness and recorded trajectory states."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from memcallback.diffusion.protocol import DiffusionModel, predict_epsilon


@dataclass
class SamplerOutput:
    """Result of a sampling run.

    Attributes:
        sample: the final samples ``x_0`` ``[B, *shape]``.
        trajectory: ``{t: x_t}``, the state the sampler fed to the network at each recorded timestep ``t``.
        timesteps: the descending timestep grid that was used.
    """

    sample: Tensor
    trajectory: dict[int, Tensor] = field(default_factory=dict)
    timesteps: Tensor | None = None


def randn(shape: Sequence[int], generator: torch.Generator | None = None, device: torch.device | str | None = None,
          dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard normal noise drawn on the generator's device and moved to ``device``.

    Drawing on the generator's own device keeps results identical across target devices (as diffusers'
    ``randn_tensor`` does): a CPU generator gives the same probes for a CPU and a CUDA model.
    """
    gen_device = generator.device if generator is not None else torch.device("cpu")
    noise = torch.randn(tuple(shape), generator=generator, device=gen_device, dtype=dtype)
    return noise.to(device) if device is not None else noise


def sampling_timesteps(num_timesteps: int, num_steps: int, include: Sequence[int] = ()) -> Tensor:
    """Descending DDIM grid of ``num_steps`` timesteps evenly spread over ``[0, T-1]``, plus ``include``.

    The grid always starts at ``T-1`` (pure noise) and ends at ``0``. Timesteps listed in ``include`` are
    inserted so that the sampler visits (and can record) them exactly.
    """
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_timesteps}], got {num_steps}.")
    bad = [t for t in include if not 0 <= int(t) < num_timesteps]
    if bad:
        raise ValueError(f"timesteps {bad} are outside [0, {num_timesteps - 1}].")
    grid = torch.linspace(num_timesteps - 1, 0, max(num_steps, 2)).round().long()
    if num_steps == 1:
        grid = grid[:1]
    grid = torch.cat([grid, torch.as_tensor(list(include), dtype=torch.long)])
    return torch.unique(grid).flip(0)


@torch.no_grad()
def ddim_sample(
    model: DiffusionModel,
    noise: Tensor,
    num_steps: int = 50,
    *,
    cond: Tensor | None = None,
    guidance_scale: float = 1.0,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    record: Sequence[int] = (),
    clip_sample: float | None = None,
) -> SamplerOutput:
    """DDIM sampling (Song et al. 2021) from the initial noise ``x_T = noise``.

    One step from ``t`` to the next grid point ``s < t`` (``alpha_{-1} = 1``, ``sigma_{-1} = 0``):

        x0_hat = (x_t - sigma_t eps_hat) / alpha_t
        c      = eta * sqrt(sigma_s^2 / sigma_t^2 * (1 - alpha_t^2 / alpha_s^2))
        x_s    = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z,   z ~ N(0, I)

    ``eta = 0`` is deterministic; ``eta = 1`` on the full grid is ancestral DDPM.

    Args:
        model: any :class:`DiffusionModel`.
        noise: initial state ``[B, *data_shape]``.
        num_steps: number of grid points (the recorded timesteps are added to the grid).
        cond: optional conditions ``[B]`` for a conditional model.
        guidance_scale: classifier-free guidance weight ``w`` (1 = plain conditional sampling).
        eta: stochasticity; needs ``generator`` when positive.
        generator: source of all randomness when ``eta > 0``.
        record: timesteps whose states ``x_t`` to return in ``SamplerOutput.trajectory``.
        clip_sample: if set, clamp ``x0_hat`` to ``[-clip_sample, clip_sample]`` at every step.
    """
    if tuple(noise.shape[1:]) != tuple(model.data_shape):
        raise ValueError(f"noise must have shape [B, *{tuple(model.data_shape)}], got {tuple(noise.shape)}.")
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}.")
    if eta > 0 and generator is None:
        raise ValueError("eta > 0 draws noise at every step: pass generator=torch.Generator().manual_seed(...) "
                         "so the global RNG is left alone.")
    schedule = model.schedule
    grid = sampling_timesteps(schedule.num_timesteps, num_steps, record)
    wanted = {int(t) for t in record}
    x = noise
    trajectory: dict[int, Tensor] = {}
    for i, t in enumerate(grid.tolist()):
        if t in wanted:
            trajectory[t] = x.clone()
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        eps = predict_epsilon(model, x, tt, cond, guidance_scale)
        alpha_t, sigma_t = schedule.coefficients(tt, x)
        x0 = (x - sigma_t * eps) / alpha_t
        if clip_sample is not None:
            x0 = x0.clamp(-clip_sample, clip_sample)
            eps = (x - alpha_t * x0) / sigma_t
        if i + 1 == len(grid):
            x = x0
            break
        alpha_s, sigma_s = schedule.coefficients(grid[i + 1].to(x.device), x)
        c = eta * (sigma_s**2 / sigma_t**2 * (1 - alpha_t**2 / alpha_s**2)).clamp(min=0).sqrt()
        x = alpha_s * x0 + (sigma_s**2 - c**2).clamp(min=0).sqrt() * eps
        if eta > 0:
            x = x + c * randn(x.shape, generator, x.device, x.dtype)
    return SamplerOutput(sample=x, trajectory=trajectory, timesteps=grid)


def ddpm_sample(
    model: DiffusionModel,
    noise: Tensor,
    *,
    generator: torch.Generator | None = None,
    cond: Tensor | None = None,
    guidance_scale: float = 1.0,
    record: Sequence[int] = (),
    clip_sample: float | None = None,
) -> SamplerOutput:
    """Ancestral DDPM sampling (Ho et al. 2020) over all T steps, with the posterior variance
    ``beta_tilde_t = (1 - alphabar_{t-1}) / (1 - alphabar_t) beta_t``: DDIM with ``eta = 1`` on the full grid."""
    return ddim_sample(model, noise, model.schedule.num_timesteps, cond=cond, guidance_scale=guidance_scale,
                       eta=1.0, generator=generator, record=record, clip_sample=clip_sample)
