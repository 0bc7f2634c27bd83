"""The Jacobian of a per-sample function as a batched operator (J v, J^T v, (J + J^T) v / 2)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch

from memcallback.spectral._common import check_points, check_positive_int, rademacher
from memcallback.spectral.operators import BatchedOperator


class _Graph:
    """One cached autograd graph of ``fn`` on a block of rows.

    ``J^T u`` is one reverse pass over ``out = fn(X)``. ``J v`` uses the double-backward trick:
    ``g(U) = J^T U`` is linear in ``U`` with Jacobian ``J``, so ``J v = d/dU <g(U), v>``: a second
    reverse pass over the (create_graph) graph of ``g``, built once on first use.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], rows: torch.Tensor, row_offset: int, m: int):
        self.X = rows.detach().clone().requires_grad_(True)
        out = fn(self.X)
        _check_fn_output(out, self.X, row_offset, m)
        self.out = out
        self._U: torch.Tensor | None = None
        self._JTU: torch.Tensor | None = None

    def rmatvec(self, V: torch.Tensor) -> torch.Tensor:
        if not self.out.requires_grad:
            return torch.zeros_like(V)
        (g,) = torch.autograd.grad(self.out, self.X, V, retain_graph=True, allow_unused=True, materialize_grads=True)
        return g.detach()

    def matvec(self, V: torch.Tensor) -> torch.Tensor:
        if not self.out.requires_grad:
            return torch.zeros_like(V)
        if self._U is None:
            self._U = torch.zeros_like(self.out, requires_grad=True)
            (self._JTU,) = torch.autograd.grad(
                self.out, self.X, self._U, create_graph=True, allow_unused=True, materialize_grads=True
            )
        if not self._JTU.requires_grad:
            return torch.zeros_like(V)
        (g,) = torch.autograd.grad(self._JTU, self._U, V, retain_graph=True, allow_unused=True, materialize_grads=True)
        return g.detach()


def _check_fn_output(out: object, X: torch.Tensor, row_offset: int, m: int) -> None:
    """Checks ``fn``'s output on rows ``row_offset, ...`` of ``x`` repeated ``m`` times per sample."""
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"fn must return a tensor of the same shape as its input, got {type(out).__name__}.")
    if out.shape != X.shape:
        raise ValueError(
            f"fn(x) must have the same shape as x (a per-sample map R^d -> R^d such as a score), got "
            f"input {list(X.shape)} and output {list(out.shape)}."
        )
    finite = torch.isfinite(out.detach().reshape(out.shape[0], -1)).all(dim=1)
    if not bool(finite.all()):
        bad = sorted({(row_offset + int(r)) // m for r in torch.nonzero(~finite).flatten()})
        raise ValueError(
            f"fn(x) is not finite (NaN/inf) for sample(s) {bad[:10]}; check the model and the inputs of "
            f"those samples (e.g. sigma_t = 0 or an overflowing network)."
        )


class JacobianOperator(BatchedOperator):
    """``J_b = d fn(x)_b / d x_b`` of a per-sample function, as a :class:`BatchedOperator`.

    Calling the operator gives ``S v = (J v + J^T v) / 2`` when ``symmetrize`` (the default), else
    ``J v``. Products are reverse-mode passes over a graph of ``fn`` kept from the first call: one
    pass for ``J^T v``, one double-backward pass for ``J v`` (see ``_Graph``). ``m`` vectors per
    sample go through the network as one batch of ``B * m`` rows (``x`` repeated ``m`` times); the
    graph for each ``m`` is cached, keeping the one for ``m = 1`` and the latest other ``m``.

    With ``chunk_size`` set, at most ``chunk_size`` rows go through ``fn`` at once; when ``B * m``
    exceeds it, the graph is rebuilt chunk by chunk on every call (one extra forward per call, bounded
    memory) instead of cached.

    With ``rowwise=False``, ``fn`` is only ever called on ``x`` itself (for functions that close over
    per-sample data of length ``B``, such as class labels): ``m`` vectors per sample then take ``m``
    passes over the one cached graph, and ``chunk_size`` is not available.

    Rows must be independent (no BatchNorm in train mode, no dropout): the batched Jacobian is then
    block-diagonal, and one batched pass gives every sample its own product.
    """

    def __init__(
        self,
        fn: Callable[[torch.Tensor], torch.Tensor],
        x: torch.Tensor,
        symmetrize: bool = True,
        chunk_size: int | None = None,
        rowwise: bool = True,
    ):
        if not callable(fn):
            raise ValueError(f"fn must be callable ([B, *shape] -> [B, *shape]), got {type(fn).__name__}.")
        check_points(x)
        if chunk_size is not None:
            check_positive_int("chunk_size", chunk_size)
            if not rowwise:
                raise ValueError(
                    "chunk_size needs rowwise=True: chunks call fn on subsets of rows, which a function with "
                    "per-sample data of length B cannot take. Drop chunk_size or make fn row-wise."
                )
        with torch.inference_mode(False):
            finite = torch.isfinite(x.detach().reshape(x.shape[0], -1)).all(dim=1)
            if not bool(finite.all()):
                bad = torch.nonzero(~finite).flatten().tolist()
                raise ValueError(f"x contains NaN/inf for sample(s) {bad[:10]}; pass finite points.")
            super().__init__(x.shape[0], tuple(x.shape[1:]), x.dtype, x.device)
            self.fn = fn
            self.symmetrize = bool(symmetrize)
            self.chunk_size = chunk_size
            self.rowwise = bool(rowwise)
            self._x = x.detach().clone()
            self._cache: dict[int, list[_Graph]] = {}
            with torch.enable_grad():
                for _ in self._graphs(1):
                    pass

    def _graphs(self, m: int) -> Iterator[tuple[slice, _Graph]]:
        """Yields ``(rows, graph)`` covering the ``B * m`` rows, from the cache when allowed."""
        if m in self._cache:
            yield from zip(self._row_slices(m), self._cache[m], strict=True)
            return
        n = self.batch_size * m
        cacheable = self.chunk_size is None or n <= self.chunk_size
        graphs = []
        for rows in self._row_slices(m):
            first = rows.start // m
            block = self._x[first : math.ceil(rows.stop / m)].repeat_interleave(m, dim=0)
            block = block[rows.start - first * m : rows.stop - first * m]
            graph = _Graph(self.fn, block, rows.start, m)
            if cacheable:
                graphs.append(graph)
            yield rows, graph
        if cacheable:
            for key in [key for key in self._cache if key != 1]:
                del self._cache[key]
            self._cache[m] = graphs

    def _row_slices(self, m: int) -> list[slice]:
        n = self.batch_size * m
        step = n if self.chunk_size is None else self.chunk_size
        return [slice(i, min(i + step, n)) for i in range(0, n, step)]

    def _products(self, V: torch.Tensor, product: str) -> torch.Tensor:
        """``product`` in ``"J"`` (J v), ``"JT"`` (J^T v), ``"S"`` ((J v + J^T v) / 2)."""
        B, m = V.shape[:2]
        with torch.inference_mode(False), torch.enable_grad():
            flat = V.reshape(B * m, *self.shape).to(self.dtype)
            if flat.is_inference():
                flat = flat.clone()
            out = torch.empty_like(flat)
            if not self.rowwise and m > 1:
                columns = flat.reshape(B, m, *self.shape).transpose(0, 1)
                products = [self._products(column[:, None], product) for column in columns]
                return torch.stack(products, dim=1).reshape(V.shape)
            for rows, graph in self._graphs(m):
                chunk = flat[rows]
                if product == "S":
                    out[rows] = 0.5 * (graph.matvec(chunk) + graph.rmatvec(chunk))
                elif product == "J":
                    out[rows] = graph.matvec(chunk)
                else:
                    out[rows] = graph.rmatvec(chunk)
        return out.reshape(V.shape).detach()

    def _apply(self, V: torch.Tensor) -> torch.Tensor:
        return self._products(V, "S" if self.symmetrize else "J")

    def matvec(self, V: torch.Tensor) -> torch.Tensor:
        """``J v`` for ``V [B, m, *shape]`` (counts ``m`` products)."""
        return self._run(lambda W: self._products(W, "J"), V, "matvec")

    def rmatvec(self, V: torch.Tensor) -> torch.Tensor:
        """``J^T v`` for ``V [B, m, *shape]`` (counts ``m`` products)."""
        return self._run(lambda W: self._products(W, "JT"), V, "rmatvec")

    def asymmetry(self, num_probes: int = 8, generator: torch.Generator | None = None) -> torch.Tensor:
        """Relative asymmetry ``||J - J^T||_F / ||J||_F`` per sample, from Rademacher probes.

        For probes ``z`` with independent +-1 entries, ``E ||A z||^2 = ||A||_F^2``; so the estimate is
        ``sqrt(sum_z ||J z - J^T z||^2 / sum_z ||J z||^2)`` (a ratio of unbiased estimates; consistent,
        slightly biased for few probes). Costs ``2 * num_probes`` products. 0 where ``J z = 0``.

        Returns:
            ``[B]`` tensor (detached, ``self.dtype``).
        """
        check_positive_int("num_probes", num_probes)
        Z = rademacher(self, (self.batch_size, num_probes, *self.shape), generator)
        jz = self.matvec(Z).reshape(self.batch_size, -1)
        jtz = self.rmatvec(Z).reshape(self.batch_size, -1)
        skew = (jz - jtz).square().sum(dim=1)
        norm = jz.square().sum(dim=1)
        return torch.where(norm > 0, skew / norm.clamp_min(torch.finfo(norm.dtype).tiny), 0.0).sqrt()


def jacobian_operator(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    symmetrize: bool = True,
    *,
    chunk_size: int | None = None,
    rowwise: bool = True,
) -> JacobianOperator:
    """Builds the batched Jacobian operator of ``fn`` at ``x``.

    Args:
        fn: row-wise function ``[n, *shape] -> [n, *shape]`` (e.g. the score ``-eps(x, t) / sigma``);
            row ``i`` of the output may depend on row ``i`` of the input only. It must accept any number
            of rows ``n``: it is called on ``x``, on ``x`` with each row repeated ``m`` times (``m``
            vectors per sample) and on chunks of rows, so per-sample side data such as the time must be
            a scalar or broadcast from ``[1]``, not a ``[B]`` tensor (else pass ``rowwise=False``).
            Parameters it closes over are treated as constants and never get a ``.grad``.
        x: ``[B, *shape]`` points. Works under ``torch.no_grad()`` and ``torch.inference_mode()``.
        symmetrize: the operator's ``__call__`` gives ``(J + J^T) v / 2`` if True, ``J v`` otherwise.
        chunk_size: at most this many rows (``B * m`` in total for ``m`` vectors per sample) go through
            ``fn`` at once; ``None`` for no limit. Needs ``rowwise``.
        rowwise: ``fn`` accepts any number of rows (see ``fn``). Set False when it closes over per-sample
            data of length ``B`` (e.g. ``cond [B]``): ``fn`` then only ever sees ``x`` itself, and ``m``
            vectors per sample cost ``m`` sequential passes instead of one batched pass.

    Returns:
        A :class:`JacobianOperator` with ``matvec`` (J v), ``rmatvec`` (J^T v) and ``asymmetry``.

    Raises:
        ValueError: if ``fn`` is not callable, ``x`` is not a floating tensor ``[B, *shape]``, ``x`` or
            ``fn(x)`` is not finite, or ``fn(x).shape != x.shape``.
    """
    return JacobianOperator(fn, x, symmetrize=symmetrize, chunk_size=chunk_size, rowwise=rowwise)
