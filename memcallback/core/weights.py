"""Which weights a check measures, and how it measures them: the raw weights or an averaged copy (EMA), in fp32.

Scripts that keep an exponential moving average of their weights generate samples (and save their model) from the
average, not from the weights the optimizer moves. :class:`AveragedWeights` pairs such a copy with the tensors it
averages, whatever keeps it:

* diffusers' ``EMAModel`` (``shadow_params`` beside ``unet.parameters()``): :meth:`AveragedWeights.from_ema_model`;
* a module holding the average (Lightning's ``WeightAveraging`` keeps ``AveragedModel(pl_module).module``, the
  reference app ``EMA(network).module``): :meth:`AveragedWeights.from_modules`.

:meth:`AveragedWeights.swapped_in` puts the average into the live tensors for the length of a check and puts the raw
values back exactly; :func:`full_precision` runs a check in float32 whatever the training dtype (autocast off, half
tensors upcast and cast back, which is exact). Neither perturbs training: every value is what it was before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from itertools import chain
from typing import Any

import torch
from torch import Tensor, nn

#: What a check measures: ``"ema"`` the averaged weights when there are any (the weights that generate samples),
#: else the raw ones; ``"raw"`` always the weights the optimizer moves.
WEIGHTS = ("ema", "raw")

Pairs = Callable[[], tuple[Sequence[Tensor], Sequence[Tensor]]]


class AveragedWeights:
    """An averaged copy of some of a model's tensors (EMA, SWA), paired with the live tensors it averages.

    The pairs are read at every use, so a copy that its owner replaces (``EMAModel.to`` or ``load_state_dict``
    after a resume, a module moved to another device) is always the current one.

    Args:
        pairs: returns ``(averaged, live)``: equally long sequences of tensors of equal shapes, in the same order.
        name: what the copy is, in messages.
    """

    def __init__(self, pairs: Pairs, name: str = "EMA") -> None:
        if not callable(pairs):
            raise TypeError(f"AveragedWeights takes a function returning (averaged, live) tensors, got "
                            f"{type(pairs).__name__}; use AveragedWeights.from_ema_model(ema, unet) or "
                            "AveragedWeights.from_modules(averaged_module, module).")
        self._pairs, self.name = pairs, name

    @classmethod
    def from_ema_model(cls, ema_model: Any, model: nn.Module) -> AveragedWeights:
        """diffusers' ``EMAModel``: its ``shadow_params`` average ``model.parameters()``, in that order.

        Args:
            ema_model: a ``diffusers.training_utils.EMAModel`` built from ``model.parameters()``.
            model: the module it averages (the unwrapped UNet).
        """
        if not isinstance(getattr(ema_model, "shadow_params", None), list):
            raise TypeError(f"{type(ema_model).__name__} has no list of shadow_params; pass a diffusers EMAModel, or "
                            "AveragedWeights.from_modules(averaged_module, module) for a module holding the average.")
        return cls(lambda: (ema_model.shadow_params, list(model.parameters())), name="EMAModel")

    @classmethod
    def from_modules(cls, averaged: nn.Module | Callable[[], nn.Module], model: nn.Module) -> AveragedWeights:
        """A module holding the average of ``model``: parameters then buffers, in module order (as Lightning's
        ``WeightAveraging`` swaps them).

        Args:
            averaged: the averaged module, or a function returning it (for one created later, e.g. in a callback's
                ``setup``).
            model: the module it averages.
        """
        get = averaged if not isinstance(averaged, nn.Module) else (lambda: averaged)

        def pairs() -> tuple[list[Tensor], list[Tensor]]:
            module = get()
            return (list(chain(module.parameters(), module.buffers())),
                    list(chain(model.parameters(), model.buffers())))

        return cls(pairs, name="averaged module")

    def tensors(self) -> tuple[list[Tensor], list[Tensor]]:
        """The current ``(averaged, live)`` tensors, checked to pair up."""
        averaged, live = (list(side) for side in self._pairs())
        if len(averaged) != len(live) or any(a.shape != v.shape for a, v in zip(averaged, live, strict=False)):
            raise ValueError(f"The {self.name} does not pair with the model: {len(averaged)} averaged tensors for "
                             f"{len(live)} live ones, or shapes that differ. Build it from the module that is "
                             "measured (the unwrapped model, after accelerator.prepare).")
        return averaged, live

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Inside, the live tensors hold the averaged values; after, exactly their own values again."""
        averaged, live = self.tensors()
        with torch.no_grad():
            raw = [v.detach().clone() for v in live]
            for a, v in zip(averaged, live, strict=True):
                v.copy_(a)
        try:
            yield
        finally:
            with torch.no_grad():  # read again: full_precision may have replaced the tensors of buffers meanwhile
                for value, v in zip(raw, self.tensors()[1], strict=True):
                    v.copy_(value)


@contextmanager
def full_precision(model: object) -> Iterator[None]:
    """Run the code inside in float32: autocast off, and every half-precision (bf16, fp16) parameter and buffer of
    ``model`` upcast, then cast back to its own dtype (exact: float32 holds every half value). A model that is not
    an ``nn.Module`` is left as it is; the upcast costs a float32 copy of its half tensors while inside."""
    if not isinstance(model, nn.Module):
        yield
        return
    half = (torch.float16, torch.bfloat16)
    cast: list[tuple[nn.Module, str, bool, torch.dtype]] = []
    with torch.no_grad(), torch.inference_mode(False):  # never leave inference tensors in a model that trains on
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                if p.dtype in half:
                    cast.append((module, name, True, p.dtype))
                    p.data = p.data.float()
            for name, b in module.named_buffers(recurse=False):
                if b.dtype in half:
                    cast.append((module, name, False, b.dtype))
                    setattr(module, name, b.float())
    devices = {t.device.type for t in chain(model.parameters(), model.buffers())} or {"cpu"}
    try:
        with ExitStack() as stack:
            for device in sorted(devices):
                stack.enter_context(torch.autocast(device_type=device, enabled=False))
            yield
    finally:
        with torch.no_grad(), torch.inference_mode(False):
            for module, name, is_parameter, dtype in cast:
                if is_parameter:
                    p = getattr(module, name)
                    p.data = p.data.to(dtype)
                else:
                    setattr(module, name, getattr(module, name).to(dtype))
