"""The safe weights: a CPU copy of the model at the last check where it was not memorizing."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SafeWeights:
    """A CPU copy of a model's ``state_dict`` (parameters, buffers, EMA weights), overwritten at every safe check.

    One copy is kept, never more: the first :meth:`keep` allocates host memory the size of the state (4 bytes per
    float32 parameter), later ones copy into it in place. Nothing is copied unless a monitor is asked to restore
    safe weights (``StopConfig.restore_safe_weights``), so the default costs no memory.
    """

    def __init__(self) -> None:
        self.state: dict[str, Tensor] | None = None
        self.step: int | None = None

    def keep(self, model: nn.Module, step: int) -> None:
        """Copy ``model.state_dict()`` to the host, as the weights of check ``step``."""
        current = model.state_dict()
        reuse = self.state is not None and self.state.keys() == current.keys() and all(
            self.state[k].shape == v.shape and self.state[k].dtype == v.dtype for k, v in current.items())
        with torch.no_grad():
            if reuse:
                for name, value in current.items():
                    self.state[name].copy_(value)
            else:
                self.state = {name: value.detach().to("cpu", copy=True) for name, value in current.items()}
        self.step = step

    def restore(self, model: nn.Module) -> bool:
        """Load the kept weights into ``model``; False when none were kept (e.g. right after a resume)."""
        if self.state is None:
            return False
        with torch.no_grad():
            model.load_state_dict(self.state)
        return True
