"""The safe weights: a CPU copy of the model (and of its averaged copy) at the last check where it was not
memorizing."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from memcallback.core.weights import AveragedWeights


class SafeWeights:
    """A CPU copy of a model's ``state_dict`` (parameters, buffers), and of its averaged (EMA) tensors when it has
    any, overwritten at every safe check.

    One copy is kept, never more: the first :meth:`keep` allocates host memory the size of the state (4 bytes per
    float32 parameter, twice with an average), later ones copy into it in place. Nothing is copied unless a monitor
    is asked to restore safe weights (``StopConfig.restore_safe_weights``), so the default costs no memory.
    Restoring both copies means that what a script saves after a stop (often the average: ``ema.copy_to(unet)``)
    is the safe model.

    Args:
        trained_only: keep only the tensors training changes, the parameters that require gradients and the
            buffers (LoRA: the adapters, not the frozen base), and restore those; only for models with no frozen
            tensor that changes otherwise (the reference app's EMA module is one, diffusers' ``EMAModel`` is not:
            it is kept as the averaged copy).
    """

    def __init__(self, trained_only: bool = False) -> None:
        self.trained_only = trained_only
        self.state: dict[str, Tensor] | None = None
        self.averaged: list[Tensor] | None = None
        self.step: int | None = None

    def keep(self, model: nn.Module, step: int, averaged: AveragedWeights | None = None) -> None:
        """Copy ``model.state_dict()`` (and the ``averaged`` tensors) to the host, as the weights of check ``step``."""
        current = trained_state(model) if self.trained_only else model.state_dict()
        self.state = _copy_into(self.state, current)
        if averaged is not None:
            values = averaged.tensors()[0]
            kept = None if self.averaged is None else dict(enumerate(self.averaged))
            self.averaged = list(_copy_into(kept, dict(enumerate(values))).values())
        self.step = step

    def load(self, state: dict[str, Tensor], step: int, averaged: list[Tensor] | None = None) -> None:
        """Take weights written earlier (e.g. read back from a checkpoint's safe folder) as those of check ``step``."""
        self.state, self.averaged, self.step = state, averaged, step

    def restore(self, model: nn.Module, averaged: AveragedWeights | None = None) -> bool:
        """Load the kept weights into ``model`` (and the kept average into ``averaged``); False when none were kept
        (e.g. right after a resume without a safe folder)."""
        if self.state is None:
            return False
        with torch.no_grad():
            model.load_state_dict(self.state, strict=not self.trained_only)
            if averaged is not None and self.averaged is not None:
                targets = averaged.tensors()[0]
                if len(targets) != len(self.averaged):
                    raise ValueError(f"{len(self.averaged)} safe averaged tensors were kept for {len(targets)} "
                                     f"of the {averaged.name}")
                for target, value in zip(targets, self.averaged, strict=True):
                    target.copy_(value)
        return True


def trained_state(model: nn.Module) -> dict[str, Tensor]:
    """The ``state_dict`` entries training changes: the parameters that require gradients and every buffer."""
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    trained |= {name for name, _ in model.named_buffers()}
    return {name: value for name, value in model.state_dict().items() if name in trained}


def _copy_into(kept: dict | None, current: dict) -> dict:
    """``current``'s tensors copied to the host: into ``kept`` in place when it has the same keys, shapes and dtypes,
    else into new host tensors."""
    reuse = kept is not None and kept.keys() == current.keys() and all(
        kept[k].shape == v.shape and kept[k].dtype == v.dtype for k, v in current.items())
    with torch.no_grad():
        if reuse:
            for name, value in current.items():
                kept[name].copy_(value)
            return kept
        return {name: value.detach().to("cpu", copy=True) for name, value in current.items()}
