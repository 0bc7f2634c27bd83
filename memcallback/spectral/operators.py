"""Batched linear operators over B independent samples."""

from __future__ import annotations

import math

import torch


class BatchedOperator:
    """A linear operator per sample, applied to many vectors of every sample in one call.

    ``op(V)`` maps ``V [B, m, *shape]`` to ``[B, m, *shape]``: vector ``V[b, j]`` is multiplied by
    sample ``b``'s matrix ``A_b`` (``dim x dim``, ``dim = prod(shape)``). Subclasses implement
    :meth:`_apply`; ``__call__`` checks the input shape, counts products and rejects non-finite
    outputs.

    ``num_matvecs`` counts products **per sample**: a call with ``m`` vectors per sample adds ``m``
    (the network sees ``B * m`` vectors, but every sample gets ``m`` products).

    Attributes:
        batch_size: number of samples ``B``.
        shape: per-sample vector shape.
        dim: ``prod(shape)``.
        dtype: dtype of the vectors.
        device: device of the vectors.
        num_matvecs: running count of per-sample products.
    """

    def __init__(self, batch_size: int, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device):
        self.batch_size = int(batch_size)
        self.shape = tuple(int(s) for s in shape)
        self.dim = math.prod(self.shape)
        self.dtype = dtype
        self.device = torch.device(device)
        self.num_matvecs = 0

    def __call__(self, V: torch.Tensor) -> torch.Tensor:
        """Returns ``A_b V[b, j]`` for every sample ``b`` and vector ``j``."""
        return self._run(self._apply, V, "op")

    def _apply(self, V: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement _apply(V).")

    def _run(self, product, V: torch.Tensor, name: str) -> torch.Tensor:
        self._check_input(V, name)
        out = product(V)
        self.num_matvecs += V.shape[1]
        self._check_output(out, name)
        return out

    def _check_input(self, V: torch.Tensor, name: str) -> None:
        if not isinstance(V, torch.Tensor):
            raise TypeError(f"{name}(V): V must be a torch.Tensor, got {type(V).__name__}.")
        if V.dim() != 2 + len(self.shape) or V.shape[0] != self.batch_size or V.shape[2:] != self.shape:
            raise ValueError(
                f"{name}(V): V must have shape [B, m, *shape] = [{self.batch_size}, m, "
                f"{', '.join(map(str, self.shape))}], got {list(V.shape)}."
            )

    def _check_output(self, out: torch.Tensor, name: str) -> None:
        finite = torch.isfinite(out.reshape(out.shape[0], -1)).all(dim=1)
        if not bool(finite.all()):
            bad = torch.nonzero(~finite).flatten().tolist()
            raise FloatingPointError(
                f"{name}(V) returned non-finite values (NaN/inf) for sample(s) {bad[:10]}; check the "
                f"function and the point x for those samples (overflow, division by sigma=0, ...)."
            )


class MatrixOperator(BatchedOperator):
    """Explicit matrices as a :class:`BatchedOperator` (tests, references, small problems).

    Args:
        A: ``[B, d, d]`` one matrix per sample (not required to be symmetric; the solvers assume it is).
        shape: per-sample vector shape with ``prod(shape) == d``; defaults to ``(d,)``.
    """

    def __init__(self, A: torch.Tensor, shape: tuple[int, ...] | None = None):
        if not isinstance(A, torch.Tensor) or A.dim() != 3 or A.shape[1] != A.shape[2]:
            got = list(A.shape) if isinstance(A, torch.Tensor) else type(A).__name__
            raise ValueError(f"A must be a tensor of shape [B, d, d], got {got}.")
        if not bool(torch.isfinite(A).all()):
            raise ValueError("A contains NaN/inf; every entry of the matrices must be finite.")
        d = A.shape[1]
        shape = (d,) if shape is None else tuple(shape)
        if math.prod(shape) != d:
            raise ValueError(f"prod(shape) must equal d = {d}, got shape {shape}.")
        super().__init__(A.shape[0], shape, A.dtype, A.device)
        self.A = A.detach()

    def _apply(self, V: torch.Tensor) -> torch.Tensor:
        B, m = V.shape[:2]
        flat = V.reshape(B, m, self.dim).to(self.dtype)
        return (flat @ self.A.mT).reshape(V.shape)
