"""Variance-preserving noise schedules: ``x_t = alpha_t x_0 + sigma_t eps`` with ``alpha_t^2 + sigma_t^2 = 1``."""

from __future__ import annotations

import math

import torch
from torch import Tensor


class NoiseSchedule:
    """A discrete variance-preserving (VP) noise schedule over timesteps ``t = 0 .. T-1``.

    The schedule is defined by the cumulative signal level ``alphabar_t`` (DDPM notation):

        alpha_t = sqrt(alphabar_t),  sigma_t = sqrt(1 - alphabar_t),  x_t = alpha_t x_0 + sigma_t eps.

    Variance-exploding / EDM schedules (``x = x_0 + s eps``) are the same process after rescaling
    ``x`` by ``1 / sqrt(1 + s^2)``; :meth:`from_sigmas` builds the equivalent VP schedule.

    The tables are kept in float64 on the CPU; :meth:`alpha` and :meth:`sigma` gather them for a tensor
    of timesteps and return values on the timesteps' device.

    Args:
        alphas_cumprod: ``[T]`` strictly decreasing values in ``(0, 1]``.
    """

    def __init__(self, alphas_cumprod: Tensor) -> None:
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64).detach().cpu()
        if abar.ndim != 1 or abar.numel() < 2:
            raise ValueError(f"alphas_cumprod must be a 1-D tensor with at least 2 entries, got shape "
                             f"{tuple(abar.shape)}.")
        if not torch.isfinite(abar).all() or (abar <= 0).any() or (abar > 1).any():
            raise ValueError("alphas_cumprod must be finite and lie in (0, 1].")
        if (abar[1:] >= abar[:-1]).any():
            raise ValueError("alphas_cumprod must be strictly decreasing (more noise at larger t).")
        self.alphas_cumprod = abar
        self._alpha = abar.sqrt()
        self._sigma = (1.0 - abar).sqrt()
        self._tables: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}

    # ----------------------------------------------------------------------------------------------
    # Constructors
    # ----------------------------------------------------------------------------------------------
    @classmethod
    def from_betas(cls, betas: Tensor) -> NoiseSchedule:
        """Schedule from per-step variances: ``alphabar_t = prod_{s<=t} (1 - beta_s)``."""
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if ((betas <= 0) | (betas >= 1)).any():
            raise ValueError("betas must lie in the open interval (0, 1).")
        return cls(torch.cumprod(1.0 - betas, dim=0))

    @classmethod
    def linear(cls, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> NoiseSchedule:
        """DDPM's linear schedule (Ho et al. 2020): ``beta_t`` linear from ``beta_start`` to ``beta_end``."""
        if num_timesteps < 2:
            raise ValueError(f"num_timesteps must be >= 2, got {num_timesteps}.")
        return cls.from_betas(torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64))

    @classmethod
    def cosine(cls, num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:
        """Improved-DDPM cosine schedule: ``alphabar(t) = cos^2(((t/T + s) / (1 + s)) pi / 2)``.

        Betas are clipped at ``max_beta`` as in Nichol & Dhariwal (2021).
        """
        if num_timesteps < 2:
            raise ValueError(f"num_timesteps must be >= 2, got {num_timesteps}.")
        steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
        return cls.from_betas(betas)

    @classmethod
    def from_sigmas(cls, sigmas: Tensor) -> NoiseSchedule:
        """VP schedule equivalent to a variance-exploding one ``x = x_0 + s_t eps`` (EDM convention).

        ``alpha_t = 1 / sqrt(1 + s_t^2)`` and ``sigma_t = s_t / sqrt(1 + s_t^2)``; a VE state ``x`` maps
        to the VP state ``alpha_t x``.

        Args:
            sigmas: ``[T]`` strictly increasing positive noise levels.
        """
        s = torch.as_tensor(sigmas, dtype=torch.float64)
        if (s <= 0).any():
            raise ValueError("sigmas must be positive.")
        return cls(1.0 / (1.0 + s**2))

    @classmethod
    def karras(
        cls, num_timesteps: int = 1000, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0
    ) -> NoiseSchedule:
        """EDM (Karras et al. 2022) noise levels, increasing in t:

            s_i = (s_min^(1/rho) + i / (T-1) (s_max^(1/rho) - s_min^(1/rho)))^rho
        """
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}.")
        ramp = torch.linspace(0, 1, num_timesteps, dtype=torch.float64)
        lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
        return cls.from_sigmas((lo + ramp * (hi - lo)) ** rho)

    @classmethod
    def create(cls, kind: str = "linear", **kwargs: float) -> NoiseSchedule:
        """Build a schedule by name (``linear``, ``cosine``, ``karras``): the entry point for configs."""
        makers = {"linear": cls.linear, "cosine": cls.cosine, "karras": cls.karras}
        if kind not in makers:
            raise ValueError(f"Unknown schedule kind {kind!r}; choose one of {sorted(makers)}.")
        return makers[kind](**kwargs)

    # ----------------------------------------------------------------------------------------------
    # Lookups
    # ----------------------------------------------------------------------------------------------
    @property
    def num_timesteps(self) -> int:
        """Number of discrete timesteps T."""
        return self.alphas_cumprod.numel()

    def _table(self, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        key = (device, dtype)
        if key not in self._tables:
            self._tables[key] = (self._alpha.to(device, dtype), self._sigma.to(device, dtype))
        return self._tables[key]

    def _check(self, t: Tensor) -> Tensor:
        t = torch.as_tensor(t)
        if t.dtype.is_floating_point or t.dtype == torch.bool:
            raise TypeError(f"timesteps must be an integer tensor, got {t.dtype}.")
        return t

    def alpha(self, t: Tensor | int, dtype: torch.dtype = torch.float32) -> Tensor:
        """Signal level ``alpha_t = sqrt(alphabar_t)`` at integer timesteps ``t`` (on ``t``'s device)."""
        t = self._check(t)
        return self._table(t.device, dtype)[0][t]

    def sigma(self, t: Tensor | int, dtype: torch.dtype = torch.float32) -> Tensor:
        """Noise level ``sigma_t = sqrt(1 - alphabar_t)`` at integer timesteps ``t``."""
        t = self._check(t)
        return self._table(t.device, dtype)[1][t]

    def coefficients(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """``(alpha_t, sigma_t)`` for per-sample timesteps ``t [B]``, shaped to broadcast against ``like``."""
        shape = (-1,) + (1,) * (like.ndim - 1)
        t = torch.as_tensor(t, device=like.device).expand(like.shape[0])
        return self.alpha(t, like.dtype).view(shape), self.sigma(t, like.dtype).view(shape)

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """Forward process sample ``x_t = alpha_t x_0 + sigma_t eps``."""
        alpha, sigma = self.coefficients(t, x0)
        return alpha * x0 + sigma * noise

    def timestep_for_sigma(self, sigma: float) -> int:
        """The timestep whose ``sigma_t`` is closest to ``sigma`` (for choosing measurement noise levels)."""
        if not 0.0 < sigma < 1.0:
            raise ValueError(f"sigma must lie in (0, 1) for a VP schedule, got {sigma}.")
        return int((self._sigma - sigma).abs().argmin())

    def __repr__(self) -> str:
        return (f"NoiseSchedule(T={self.num_timesteps}, sigma_0={self._sigma[0]:.4g}, "
                f"sigma_T={self._sigma[-1]:.4g})")
