"""The Jacobian of a per-sample function as a batched operator (J v, J^T v, (J + J^T) v / 2)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from memcallback.spectral._common import check_points, check_positive_int, rademacher
from memcallback.spectral.operators import BatchedOperator

#: How ``J v`` is computed: ``"forward"`` (forward-mode ``torch.func.jvp``, vmapped over the vectors) or
#: ``"double_backward"`` (a reverse pass over the graph of ``J^T u``).
JVP_MODES = ("forward", "double_backward")
_PRODUCTS = ("J", "JT", "S")


class _Graph:
    """One cached autograd graph of ``fn`` on a block of rows of ``x``.

    ``J^T u`` is one reverse pass over ``out = fn(X)``. ``J v`` uses the double-backward trick:
    ``g(U) = J^T U`` is linear in ``U`` with Jacobian ``J``, so ``J v = d/dU <g(U), v>``: a second
    reverse pass over the (create_graph) graph of ``g``, built once on first use. Several vectors per
    row (``V [g, rows, *shape]``) take ``g`` passes over the same graph.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], rows: torch.Tensor, row_offset: int):
        self.X = rows.detach().clone().requires_grad_(True)
        out = fn(self.X)
        _check_fn_output(out, self.X, row_offset)
        self.out = out
        self._U: torch.Tensor | None = None
        self._JTU: torch.Tensor | None = None

    def rmatvec(self, V: torch.Tensor) -> torch.Tensor:
        if not self.out.requires_grad:
            return torch.zeros_like(V)
        return _grad(self.out, self.X, V)

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
        return _grad(self._JTU, self._U, V)


def _grad(out: torch.Tensor, inputs: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """``[d out / d inputs]^T v`` for each cotangent of ``V [g, *out.shape]``: ``g`` reverse passes over the
    retained graph, no new forward pass (a ``vmap`` over the cotangents, ``is_grads_batched``, would batch
    them, but fails on common networks, e.g. diffusers' UNets)."""
    grads = [torch.autograd.grad(out, inputs, v, retain_graph=True, allow_unused=True, materialize_grads=True)[0]
             for v in V]
    return torch.stack(grads).detach()


def _check_fn_output(out: object, X: torch.Tensor, row_offset: int) -> None:
    """Checks ``fn``'s output on rows ``row_offset, ...`` of ``x``."""
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"fn must return a tensor of the same shape as its input, got {type(out).__name__}.")
    if out.shape != X.shape:
        raise ValueError(
            f"fn(x) must have the same shape as x (a per-sample map R^d -> R^d such as a score), got "
            f"input {list(X.shape)} and output {list(out.shape)}."
        )
    finite = torch.isfinite(out.detach().reshape(out.shape[0], -1)).all(dim=1)
    if not bool(finite.all()):
        bad = sorted(row_offset + int(r) for r in torch.nonzero(~finite).flatten())
        raise ValueError(
            f"fn(x) is not finite (NaN/inf) for sample(s) {bad[:10]}; check the model and the inputs of "
            f"those samples (e.g. sigma_t = 0 or an overflowing network)."
        )


class JacobianOperator(BatchedOperator):
    """``J_b = d fn(x)_b / d x_b`` of a per-sample function, as a :class:`BatchedOperator`.

    Calling the operator gives ``S v = (J v + J^T v) / 2`` when ``symmetrize`` (the default), else
    ``J v``. One forward pass at construction builds the graph of ``fn`` at ``x`` (its value is
    ``output``); every product after that is a reverse pass over it: ``J^T v`` one, ``J v`` a
    double-backward pass (``jvp="double_backward"``, see ``_Graph``). With ``jvp="forward"``, ``J v`` is
    instead a forward-mode ``torch.func.jvp`` of ``fn`` at ``x`` (one primal pass over the ``B`` rows
    plus the tangents per call; ``fn`` must support ``torch.func`` transforms: no ``.item()``, no
    in-place updates of captured tensors, attention on the math backend; ``m`` vectors per sample go
    through one pass, ``vmap``-ed over the vectors). ``m`` reverse-mode products per sample take ``m``
    reverse passes over the one graph, never new forward passes, so ``fn`` only ever sees ``x`` (or
    chunks of its rows).

    The counter ``num_matvecs`` counts operator applications (one per vector, whatever the product);
    ``num_jacobian_products`` counts Jacobian products, the unit of cost: one ``J v`` or one ``J^T v``
    is 1, a symmetric product ``S v`` is 2.

    With ``chunk_size`` set, at most ``chunk_size`` rows of ``x`` go through ``fn`` at once (forward mode:
    at most ``chunk_size`` tangent rows per pass); when ``B`` exceeds it, the graph is rebuilt chunk by
    chunk on every call (one extra forward per call, bounded memory) instead of cached.

    With ``rowwise=False`` (for functions that close over per-sample data of length ``B``, such as
    class labels) ``chunk_size`` is not available, since chunks call ``fn`` on subsets of rows.

    Rows must be independent (no BatchNorm in train mode, no dropout): the batched Jacobian is then
    block-diagonal, and one batched pass gives every sample its own product.

    Attributes:
        output: ``fn(x)`` (detached), from the forward pass that built the first graph.
        num_jacobian_products: running count of Jacobian products per sample (see above).
    """

    def __init__(
        self,
        fn: Callable[[torch.Tensor], torch.Tensor],
        x: torch.Tensor,
        symmetrize: bool = True,
        chunk_size: int | None = None,
        rowwise: bool = True,
        jvp: str = "double_backward",
    ):
        if not callable(fn):
            raise ValueError(f"fn must be callable ([B, *shape] -> [B, *shape]), got {type(fn).__name__}.")
        check_points(x)
        if jvp not in JVP_MODES:
            raise ValueError(f"jvp must be one of {JVP_MODES}, got {jvp!r}.")
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
            self.jvp = jvp
            self.num_jacobian_products = 0
            self._x = x.detach().clone()
            self._graphs_cache: list[_Graph] | None = None
            with torch.enable_grad():
                self.output = torch.cat([graph.out.detach() for _, graph in self._graphs()])

    def _graphs(self) -> Iterator[tuple[slice, _Graph]]:
        """Yields ``(rows, graph)`` covering the ``B`` rows of ``x``, from the cache when it fits."""
        B = self.batch_size
        step = B if self.chunk_size is None else min(B, self.chunk_size)
        slices = [slice(i, min(i + step, B)) for i in range(0, B, step)]
        if self._graphs_cache is not None:
            yield from zip(slices, self._graphs_cache, strict=True)
            return
        graphs = [None] * len(slices)
        for i, rows in enumerate(slices):
            graphs[i] = _Graph(self.fn, self._x[rows], rows.start)
            yield rows, graphs[i]
        if step == B:
            self._graphs_cache = graphs

    def _products(self, V: torch.Tensor, product: str) -> torch.Tensor:
        """``product`` in ``"J"`` (J v), ``"JT"`` (J^T v), ``"S"`` ((J v + J^T v) / 2)."""
        if product != "JT" and self.jvp == "forward":
            jv = self._forward_jvp(V)
            return jv if product == "J" else 0.5 * (jv + self._products(V, "JT"))
        with torch.inference_mode(False), torch.enable_grad():
            W = V.to(self.dtype)
            W = W.clone() if W.is_inference() else W
            out = torch.empty_like(W)
            for rows, graph in self._graphs():
                block = W[rows].transpose(0, 1)  # [m, rows, *shape]
                if product == "S":
                    result = 0.5 * (graph.matvec(block) + graph.rmatvec(block))
                else:
                    result = graph.matvec(block) if product == "J" else graph.rmatvec(block)
                out[rows] = result.transpose(0, 1)
        return out.detach()

    def _forward_jvp(self, V: torch.Tensor) -> torch.Tensor:
        """``J v`` by forward mode: ``vmap`` over the ``m`` vectors of ``jvp(fn, (x,), (v,))``."""
        chunk = None if self.chunk_size is None else max(1, self.chunk_size // self.batch_size)

        def tangent(v: torch.Tensor) -> torch.Tensor:
            return torch.func.jvp(self.fn, (self._x,), (v,))[1]

        with torch.inference_mode(False), torch.enable_grad():
            W = V.to(self.dtype)
            W = W.clone() if W.is_inference() else W
            if W.shape[1] == 1:  # vmap over one vector only adds overhead
                return tangent(W[:, 0]).detach()[:, None]
            out = torch.func.vmap(tangent, in_dims=1, out_dims=1, chunk_size=chunk)(W)
        return out.detach()

    def _counted(self, V: torch.Tensor, product: str) -> torch.Tensor:
        self.num_jacobian_products += (2 if product == "S" else 1) * V.shape[1]
        return self._products(V, product)

    def _apply(self, V: torch.Tensor) -> torch.Tensor:
        return self._counted(V, "S" if self.symmetrize else "J")

    def matvec(self, V: torch.Tensor) -> torch.Tensor:
        """``J v`` for ``V [B, m, *shape]`` (counts ``m`` products)."""
        return self._run(lambda W: self._counted(W, "J"), V, "matvec")

    def rmatvec(self, V: torch.Tensor) -> torch.Tensor:
        """``J^T v`` for ``V [B, m, *shape]`` (counts ``m`` products)."""
        return self._run(lambda W: self._counted(W, "JT"), V, "rmatvec")

    def view(self, product: str) -> BatchedOperator:
        """This Jacobian as another :class:`BatchedOperator`: ``"J"`` (J v), ``"JT"`` (J^T v) or ``"S"``.

        The view shares the cached graphs and adds to this operator's ``num_jacobian_products``. For a
        quadratic form ``z^T A z`` (a Hutchinson trace) any of the three gives the same value, so the
        cheapest single product serves (``"JT"``: one reverse pass).
        """
        if product not in _PRODUCTS:
            raise ValueError(f"product must be one of {_PRODUCTS}, got {product!r}.")
        return _View(self, product)

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


class _View(BatchedOperator):
    """One product of a :class:`JacobianOperator` as an operator of its own (see ``JacobianOperator.view``)."""

    def __init__(self, parent: JacobianOperator, product: str):
        super().__init__(parent.batch_size, parent.shape, parent.dtype, parent.device)
        self.parent = parent
        self.product = product

    def _apply(self, V: torch.Tensor) -> torch.Tensor:
        return self.parent._counted(V, self.product)


def jacobian_operator(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    symmetrize: bool = True,
    *,
    chunk_size: int | None = None,
    rowwise: bool = True,
    jvp: str = "double_backward",
) -> JacobianOperator:
    """Builds the batched Jacobian operator of ``fn`` at ``x``.

    Args:
        fn: row-wise function ``[n, *shape] -> [n, *shape]`` (e.g. the score ``-eps(x, t) / sigma``);
            row ``i`` of the output may depend on row ``i`` of the input only. It is called on ``x``, and
            with ``chunk_size`` on chunks of its rows (then per-sample side data such as the time must be
            a scalar or broadcast from ``[1]``, not a ``[B]`` tensor). Parameters it closes over are
            treated as constants and never get a ``.grad``.
        x: ``[B, *shape]`` points. Works under ``torch.no_grad()`` and ``torch.inference_mode()``.
        symmetrize: the operator's ``__call__`` gives ``(J + J^T) v / 2`` if True, ``J v`` otherwise.
        chunk_size: at most this many rows of ``x`` go through ``fn`` at once (forward mode: tangent
            rows per pass); ``None`` for no limit. Needs ``rowwise``.
        rowwise: ``fn`` accepts any subset of rows (see ``fn``). Set False when it closes over per-sample
            data of length ``B`` (e.g. ``cond [B]``); ``chunk_size`` then is not available.
        jvp: how ``J v`` is computed: ``"double_backward"`` (reverse mode twice, works for any
            differentiable ``fn``) or ``"forward"`` (``torch.func.jvp`` vmapped over the vectors; ``fn``
            must support ``torch.func`` transforms).

    Returns:
        A :class:`JacobianOperator` with ``matvec`` (J v), ``rmatvec`` (J^T v) and ``asymmetry``.

    Raises:
        ValueError: if ``fn`` is not callable, ``x`` is not a floating tensor ``[B, *shape]``, ``x`` or
            ``fn(x)`` is not finite, or ``fn(x).shape != x.shape``.
    """
    return JacobianOperator(fn, x, symmetrize=symmetrize, chunk_size=chunk_size, rowwise=rowwise, jvp=jvp)
