"""A residual MLP noise-prediction network for flat or small data (2-D toys, 8x8 digits)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn
from torch.nn import functional as F

from memcallback.app.models.embeddings import ClassEmbedding, TimestepEmbedding, condition_embedding

NORMS = ("layer", "none")


class _ResidualBlock(nn.Module):
    """``h + W2 silu(W1 silu(norm(h)) + E emb)``: a pre-norm residual block with an additive embedding."""

    def __init__(self, width: int, emb_dim: int, norm: str) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width) if norm == "layer" else nn.Identity()
        self.fc1 = nn.Linear(width, width)
        self.emb = nn.Linear(emb_dim, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        z = self.fc1(F.silu(self.norm(h))) + self.emb(emb)
        return h + self.fc2(F.silu(z))


class ResidualMLP(nn.Module):
    """Residual MLP ``(x [B, *data_shape], t [B], cond [B] | None) -> [B, *data_shape]``.

    The input is flattened, lifted to ``hidden`` features, passed through ``num_blocks`` residual blocks
    that each add a projection of the time (+ class) embedding, and projected back. There is no batch
    normalization, so every output row depends only on its own input row (per-sample Jacobians are exact).

    Args:
        data_shape: shape of one sample, e.g. ``(2,)`` or ``(1, 8, 8)``.
        hidden: width of the residual stream.
        num_blocks: number of residual blocks.
        time_embed_dim: width of the sinusoidal timestep features.
        num_classes: number of classes for a conditional model (``None``: unconditional). Labels ``-1`` and
            ``cond=None`` use a learned null embedding (classifier-free guidance).
        norm: ``"layer"`` (LayerNorm in each block) or ``"none"``.
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        hidden: int = 256,
        num_blocks: int = 3,
        time_embed_dim: int = 128,
        num_classes: int | None = None,
        norm: str = "layer",
    ) -> None:
        super().__init__()
        data_shape = tuple(int(n) for n in data_shape)
        if not data_shape or any(n < 1 for n in data_shape):
            raise ValueError(f"data_shape must be a non-empty sequence of positive ints, got {data_shape}.")
        if hidden < 1 or num_blocks < 0:
            raise ValueError(f"need hidden >= 1 and num_blocks >= 0, got hidden={hidden}, num_blocks={num_blocks}.")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}.")
        self.data_shape = data_shape
        self.num_classes = num_classes
        self.init_kwargs = {"data_shape": list(data_shape), "hidden": hidden, "num_blocks": num_blocks,
                            "time_embed_dim": time_embed_dim, "num_classes": num_classes, "norm": norm}
        dim = math.prod(data_shape)
        self.time_embed = TimestepEmbedding(time_embed_dim, hidden)
        self.class_embed = ClassEmbedding(num_classes, hidden) if num_classes is not None else None
        self.input = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(_ResidualBlock(hidden, hidden, norm) for _ in range(num_blocks))
        self.output = nn.Sequential(nn.LayerNorm(hidden) if norm == "layer" else nn.Identity(), nn.SiLU(),
                                    nn.Linear(hidden, dim))

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """Predict the network target for ``x`` at timesteps ``t``, optionally conditioned on labels ``cond``."""
        emb = condition_embedding(self, t, cond, x)
        h = self.input(x.flatten(1))
        for block in self.blocks:
            h = block(h, emb)
        return self.output(h).view_as(x)
