"""Helpers shared by the solvers: argument checks, seeded random draws, Ritz selection."""

from __future__ import annotations

import torch

from memcallback.spectral.operators import BatchedOperator

WHICH = ("LA", "SA", "LM")


def check_operator(op: object) -> BatchedOperator:
    """Raises TypeError unless ``op`` is a :class:`BatchedOperator`."""
    if not isinstance(op, BatchedOperator):
        raise TypeError(
            f"op must be a memcallback.spectral.BatchedOperator (e.g. from jacobian_operator or "
            f"MatrixOperator), got {type(op).__name__}."
        )
    return op


def check_which(which: str) -> str:
    """Raises ValueError for an unknown spectrum end."""
    if which not in WHICH:
        raise ValueError(
            f"which must be one of {WHICH} (largest algebraic, smallest algebraic, largest magnitude), got {which!r}."
        )
    return which


def check_k(k: int, dim: int) -> int:
    """Raises ValueError unless ``1 <= k <= dim``."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= dim:
        raise ValueError(f"k must be an int with 1 <= k <= dim = {dim}, got {k!r}.")
    return k


def check_positive_int(name: str, value: int) -> int:
    """Raises ValueError unless ``value`` is an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}.")
    return value


def randn(op: BatchedOperator, shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal draws for ``op``, reproducible from ``generator``.

    The numbers are drawn on ``generator.device`` (a CPU generator cannot fill a CUDA tensor) in
    float64, then moved to ``op.device`` / ``op.dtype``; so a fixed CPU generator gives the same start
    vectors on every device. Without a generator the global RNG of ``op.device`` is used.
    """
    device = generator.device if generator is not None else op.device
    draw = torch.randn(shape, generator=generator, device=device, dtype=torch.float64)
    return draw.to(device=op.device, dtype=op.dtype)


def rademacher(op: BatchedOperator, shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    """Random signs (+1/-1), drawn like :func:`randn`."""
    device = generator.device if generator is not None else op.device
    bits = torch.randint(0, 2, shape, generator=generator, device=device, dtype=torch.int64)
    return (2 * bits - 1).to(device=op.device, dtype=op.dtype)


def select(theta: torch.Tensor, k: int, which: str) -> torch.Tensor:
    """Indices ``[..., k]`` of the wanted Ritz values in ``theta`` (sorted as SpectrumResult says)."""
    if which == "LA":
        return torch.argsort(theta, dim=-1, descending=True, stable=True)[..., :k]
    if which == "SA":
        return torch.argsort(theta, dim=-1, stable=True)[..., :k]
    return torch.argsort(theta.abs(), dim=-1, descending=True, stable=True)[..., :k]


def apply_flat(op: BatchedOperator, V: torch.Tensor) -> torch.Tensor:
    """Applies ``op`` to flat vectors ``V [B, m, d]`` and returns ``[B, m, d]``."""
    B, m = V.shape[:2]
    return op(V.reshape(B, m, *op.shape)).reshape(B, m, op.dim)


def check_points(x: object) -> None:
    """Raise a ``ValueError`` unless ``x`` is a floating tensor ``[B, *shape]`` with ``B >= 1``."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor of shape [B, *shape], got {type(x).__name__}.")
    if x.dim() < 2 or x.shape[0] < 1 or x[0].numel() < 1:
        raise ValueError(
            f"x must have shape [B, *shape] with B >= 1 and a non-empty per-sample shape (add a batch "
            f"dimension with x[None] for a single sample), got {list(x.shape)}."
        )
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}.")
