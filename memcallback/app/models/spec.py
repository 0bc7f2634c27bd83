"""Record a reference network as ``{"_target_": class path, **init kwargs}`` and rebuild it from that record."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from torch import nn


def network_spec(network: nn.Module) -> dict[str, Any] | None:
    """The instantiable description of ``network``, or ``None`` when it does not expose ``init_kwargs``.

    The reference networks keep their constructor arguments in ``init_kwargs``; the spec is stored in a
    checkpoint's hyperparameters so that ``DiffusionModule.load_from_checkpoint(path)`` can rebuild them.
    """
    kwargs = getattr(network, "init_kwargs", None)
    if not isinstance(kwargs, Mapping):
        return None
    cls = type(network)
    return {"_target_": f"{cls.__module__}.{cls.__qualname__}", **kwargs}


def build_network(spec: Mapping[str, Any]) -> nn.Module:
    """Instantiate a network from a spec made by :func:`network_spec` (or an equivalent Hydra config)."""
    kwargs = dict(spec)
    target = kwargs.pop("_target_", None)
    if not isinstance(target, str) or "." not in target:
        raise ValueError(f"a network spec needs '_target_': 'package.module.Class', got {target!r}.")
    module_name, _, class_name = target.rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    network = cls(**kwargs)
    if not isinstance(network, nn.Module):
        raise TypeError(f"{target} built a {type(network).__name__}, not a torch.nn.Module.")
    return network
