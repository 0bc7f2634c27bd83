"""Timestep and class embeddings shared by the reference networks."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class SinusoidalEmbedding(nn.Module):
    """Transformer-style embedding of integer timesteps (Ho et al. 2020, Vaswani et al. 2017).

    For ``i < dim / 2``: ``e[2i] = sin(t w_i)``, ``e[2i+1] = cos(t w_i)`` (concatenated as ``[sin | cos]``)
    with frequencies ``w_i = max_period^(-i / (dim/2))``.

    Args:
        dim: embedding width (even).
        max_period: the slowest period, in timesteps.
    """

    def __init__(self, dim: int, max_period: float = 10_000.0) -> None:
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"time embedding dim must be an even integer >= 2, got {dim}.")
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        """Embed timesteps ``t [B]`` into ``[B, dim]``."""
        angles = t.to(self.freqs.dtype)[:, None] * self.freqs[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=1)


class TimestepEmbedding(nn.Sequential):
    """Sinusoidal features followed by a two-layer SiLU MLP: ``t [B] -> [B, out_dim]``."""

    def __init__(self, sinusoidal_dim: int, out_dim: int) -> None:
        super().__init__(
            SinusoidalEmbedding(sinusoidal_dim),
            nn.Linear(sinusoidal_dim, out_dim),
            nn.SiLU(),
            nn.Linear(out_dim, out_dim),
        )


class ClassEmbedding(nn.Module):
    """Learned class embeddings with an extra *null* class for classifier-free guidance.

    Row ``num_classes`` of the table is the null embedding: it is used for ``cond=None`` and for
    labels equal to ``-1`` (unlabeled or dropped).

    Args:
        num_classes: number of real classes.
        dim: embedding width.
    """

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer or None, got {num_classes}.")
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)

    def forward(self, cond: Tensor | None, batch_size: int, device: torch.device) -> Tensor:
        """Embed labels ``cond [B]`` (``None`` or ``-1`` = null) into ``[B, dim]``."""
        if cond is None:
            index = torch.full((batch_size,), self.num_classes, device=device, dtype=torch.long)
        else:
            if cond.shape != (batch_size,) or cond.dtype.is_floating_point:
                raise ValueError(f"cond must be an integer tensor of shape [{batch_size}], got "
                                 f"{cond.dtype} {tuple(cond.shape)}.")
            if bool(((cond < -1) | (cond >= self.num_classes)).any()):
                raise ValueError(f"class labels must lie in [0, {self.num_classes - 1}] or be -1 (null).")
            index = torch.where(cond < 0, self.num_classes, cond.long())
        return self.table(index)


def condition_embedding(network: nn.Module, t: Tensor, cond: Tensor | None, x: Tensor) -> Tensor:
    """``time_embed(t) + class_embed(cond)`` of a reference network (time only when it is unconditional).

    A condition passed to a network built without ``num_classes`` raises a clear error instead of being ignored.
    """
    emb = network.time_embed(t)
    if network.class_embed is not None:
        return emb + network.class_embed(cond, x.shape[0], x.device)
    if cond is not None:
        raise ValueError(f"{type(network).__name__} was built with num_classes=None (unconditional) but received "
                         "cond; set num_classes to train a conditional model.")
    return emb
