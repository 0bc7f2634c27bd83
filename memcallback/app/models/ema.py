"""Exponential moving average of a network's weights."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    """A frozen copy of ``network`` whose weights track an exponential moving average of the original.

    After each optimizer step, every floating-point parameter and buffer is updated as

        theta_ema <- d theta_ema + (1 - d) theta,   d = min(decay, (1 + n) / (10 + n))

    where ``n`` counts previous updates (the warm-up keeps early averages from being dominated by the random
    initialization). Being a submodule, the copy moves with the LightningModule and is saved in its checkpoint.

    Args:
        network: the network to average (copied; the original is not modified).
        decay: the asymptotic decay ``d`` in ``[0, 1)``.
    """

    def __init__(self, network: nn.Module, decay: float) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1) (e.g. 0.999), or be None to disable EMA; got {decay}.")
        self.decay = decay
        self.module = copy.deepcopy(network).requires_grad_(False)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def current_decay(self) -> float:
        """The decay the next update will use: ``min(decay, (1 + n) / (10 + n))``."""
        n = int(self.num_updates)
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, network: nn.Module) -> None:
        """Move the averaged weights one step towards ``network``'s current weights."""
        d = self.current_decay()
        ema_state = self.module.state_dict()
        for name, value in network.state_dict().items():
            target = ema_state[name]
            if target.dtype.is_floating_point:
                target.lerp_(value.detach(), 1.0 - d)
            else:
                target.copy_(value)
        self.num_updates += 1
