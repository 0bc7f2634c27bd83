"""A small UNet noise-prediction network for images (8x8 digits up to 32x32 CIFAR)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from memcallback.app.models.embeddings import ClassEmbedding, TimestepEmbedding, condition_embedding


def _group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups (per-sample statistics: rows stay independent)."""
    return nn.GroupNorm(math.gcd(8, channels), channels)


class _ResBlock(nn.Module):
    """``skip(h) + conv(silu(norm(conv(silu(norm(h))) + E emb))))``: the DDPM residual block."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int) -> None:
        super().__init__()
        self.norm1 = _group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = _group_norm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        z = self.conv1(F.silu(self.norm1(h))) + self.emb(emb)[:, :, None, None]
        z = self.conv2(F.silu(self.norm2(z)))
        return self.skip(h) + z


class _Level(nn.Module):
    """The residual blocks of one resolution, plus an optional resampling layer."""

    def __init__(self, blocks: list[_ResBlock], resample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.resample = resample

    def run_blocks(self, h: Tensor, emb: Tensor) -> Tensor:
        for block in self.blocks:
            h = block(h, emb)
        return h


class _Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, h: Tensor) -> Tensor:
        return self.conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))


class SmallUNet(nn.Module):
    """A compact DDPM-style UNet ``(x [B, C, H, W], t [B], cond [B] | None) -> [B, C, H, W]``.

    Level ``i`` works at resolution ``H / 2^i`` with ``base_channels * channel_mults[i]`` channels; each level
    holds ``num_res_blocks`` residual blocks (GroupNorm, SiLU, additive time + class embedding), the decoder
    concatenates the encoder's output of the same level. GroupNorm normalizes each sample on its own, so output
    rows depend only on their own input rows.

    Args:
        data_shape: ``(C, H, W)``; ``H`` and ``W`` must be divisible by ``2 ** (len(channel_mults) - 1)``.
        base_channels: channels of the first level.
        channel_mults: per-level channel multipliers (one entry per resolution).
        num_res_blocks: residual blocks per level (encoder and decoder).
        num_classes: number of classes for a conditional model (``None``: unconditional). Labels ``-1`` and
            ``cond=None`` use a learned null embedding (classifier-free guidance).
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2),
        num_res_blocks: int = 1,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        data_shape = tuple(int(n) for n in data_shape)
        mults = tuple(int(m) for m in channel_mults)
        if len(data_shape) != 3 or any(n < 1 for n in data_shape):
            raise ValueError(f"SmallUNet needs data_shape=(C, H, W) with positive entries, got {data_shape}.")
        if not mults or any(m < 1 for m in mults) or base_channels < 1 or num_res_blocks < 1:
            raise ValueError("need base_channels >= 1, num_res_blocks >= 1 and a non-empty channel_mults of "
                             f"positive ints; got {base_channels}, {num_res_blocks}, {mults}.")
        factor = 2 ** (len(mults) - 1)
        channels, height, width = data_shape
        if height % factor or width % factor:
            raise ValueError(f"SmallUNet with {len(mults)} levels halves the image {len(mults) - 1} times: H and W "
                             f"must be divisible by {factor}, got H={height}, W={width}. Use fewer channel_mults "
                             "or resize the images.")
        self.data_shape = data_shape
        self.num_classes = num_classes
        self.init_kwargs = {"data_shape": list(data_shape), "base_channels": base_channels,
                            "channel_mults": list(mults), "num_res_blocks": num_res_blocks,
                            "num_classes": num_classes}
        emb_dim = 4 * base_channels
        widths = [base_channels * m for m in mults]
        self.time_embed = TimestepEmbedding(base_channels, emb_dim)
        self.class_embed = ClassEmbedding(num_classes, emb_dim) if num_classes is not None else None
        self.conv_in = nn.Conv2d(channels, widths[0], 3, padding=1)

        self.down = nn.ModuleList()
        prev = widths[0]
        for i, width_i in enumerate(widths):
            blocks = [_ResBlock(prev if j == 0 else width_i, width_i, emb_dim) for j in range(num_res_blocks)]
            last = i == len(widths) - 1
            self.down.append(_Level(blocks, None if last else nn.Conv2d(width_i, width_i, 3, stride=2, padding=1)))
            prev = width_i
        self.mid = _Level([_ResBlock(prev, prev, emb_dim), _ResBlock(prev, prev, emb_dim)], None)
        self.up = nn.ModuleList()
        for i in reversed(range(len(widths))):
            blocks = [_ResBlock(prev + widths[i] if j == 0 else widths[i], widths[i], emb_dim)
                      for j in range(num_res_blocks)]
            self.up.append(_Level(blocks, _Upsample(prev) if i < len(widths) - 1 else None))
            prev = widths[i]
        self.conv_out = nn.Sequential(_group_norm(prev), nn.SiLU(), nn.Conv2d(prev, channels, 3, padding=1))

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """Predict the network target for images ``x`` at timesteps ``t``, optionally conditioned on ``cond``."""
        emb = condition_embedding(self, t, cond, x)
        h = self.conv_in(x)
        skips = []
        for level in self.down:
            h = level.run_blocks(h, emb)
            skips.append(h)
            if level.resample is not None:
                h = level.resample(h)
        h = self.mid.run_blocks(h, emb)
        for level in self.up:
            if level.resample is not None:
                h = level.resample(h)
            h = level.run_blocks(torch.cat([h, skips.pop()], dim=1), emb)
        return self.conv_out(h)
