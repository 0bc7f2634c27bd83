"""The Jacobian operator: exact products, symmetrization, asymmetry, chunking, grad hygiene, errors."""

from __future__ import annotations

import pytest
import torch

from memcallback.spectral import dense_jacobian, jacobian_operator, lanczos


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.Tanh(), torch.nn.Linear(32, 12)).double()


def test_products_match_the_dense_jacobian(case):
    _, fn, x, S = case
    J = dense_jacobian(fn, x)
    V = torch.randn(x.shape[0], 3, x.shape[1], generator=gen(), dtype=x.dtype)
    op = jacobian_operator(fn, x)
    torch.testing.assert_close(op.matvec(V), V @ J.mT)
    torch.testing.assert_close(op.rmatvec(V), V @ J)
    torch.testing.assert_close(op(V), V @ S.mT)
    torch.testing.assert_close(jacobian_operator(fn, x, symmetrize=False)(V), V @ J.mT)
    assert op.num_matvecs == 9


def test_image_shaped_inputs():
    conv = torch.nn.Conv2d(2, 2, 3, padding=1).double()
    x = torch.randn(2, 2, 5, 5, generator=gen(), dtype=torch.float64)
    op = jacobian_operator(lambda z: torch.tanh(conv(z)), x)
    assert op.shape == (2, 5, 5) and op.dim == 50
    J = dense_jacobian(lambda z: torch.tanh(conv(z)), x)
    V = torch.randn(2, 4, 2, 5, 5, generator=gen(1), dtype=torch.float64)
    torch.testing.assert_close(op(V).reshape(2, 4, 50), V.reshape(2, 4, 50) @ (0.5 * (J + J.mT)).mT)


def test_asymmetry_estimate_matches_the_exact_ratio(case):
    _, fn, x, _ = case
    J = dense_jacobian(fn, x)
    exact = (J - J.mT).norm(dim=(1, 2)) / J.norm(dim=(1, 2))
    est = jacobian_operator(fn, x).asymmetry(num_probes=256, generator=gen())
    assert est.shape == (x.shape[0],)
    torch.testing.assert_close(est, exact, atol=0.02, rtol=0.15)
    if exact.max() < 1e-12:  # gradient fields: J is symmetric
        assert est.max() < 1e-6


@pytest.mark.parametrize("chunk_size", [1, 2, 5, 7])
def test_chunking_gives_the_same_products(chunk_size):
    net = _net()
    x = torch.randn(3, 12, generator=gen(), dtype=torch.float64)
    V = torch.randn(3, 4, 12, generator=gen(1), dtype=torch.float64)
    ref = jacobian_operator(net, x)
    seen = []

    def fn(z):
        seen.append(z.shape[0])
        return net(z)

    chunked = jacobian_operator(fn, x, chunk_size=chunk_size)
    for product in ("__call__", "matvec", "rmatvec"):
        torch.testing.assert_close(getattr(chunked, product)(V), getattr(ref, product)(V))
    torch.testing.assert_close(chunked(V[:, :1]), ref(V[:, :1]))
    assert max(seen) <= chunk_size
    a = lanczos(chunked, 4, generator=gen(2)).eigenvalues
    torch.testing.assert_close(a, lanczos(ref, 4, generator=gen(2)).eigenvalues)


def test_no_grad_left_on_parameters_and_grad_mode_untouched():
    net = _net()
    x = torch.randn(3, 12, generator=gen(), dtype=torch.float64)
    op = jacobian_operator(net, x)
    lanczos(op, 3, generator=gen())
    op.asymmetry(4, gen())
    assert all(p.grad is None for p in net.parameters())
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_works_under_no_grad_and_inference_mode(context):
    net = _net()
    ref_x = torch.randn(3, 12, generator=gen(), dtype=torch.float64)
    ref = lanczos(jacobian_operator(net, ref_x), 3, generator=gen(), return_eigenvectors=True)
    with context():
        x = ref_x.clone()  # an inference tensor under inference_mode
        op = jacobian_operator(net, x)
        res = lanczos(op, 3, generator=gen(), return_eigenvectors=True)
        asym = op.asymmetry(4, gen())
    torch.testing.assert_close(res.eigenvalues, ref.eigenvalues)
    assert not res.eigenvalues.requires_grad and not asym.requires_grad
    assert all(p.grad is None for p in net.parameters())


def test_outputs_are_detached():
    net = _net()
    x = torch.randn(2, 12, generator=gen(), dtype=torch.float64, requires_grad=True)
    op = jacobian_operator(net, x)
    V = torch.randn(2, 1, 12, generator=gen(), dtype=torch.float64)
    assert not op(V).requires_grad and not op.matvec(V).requires_grad and not op.rmatvec(V).requires_grad


def test_constant_function_has_zero_jacobian():
    c = torch.ones(1, 4, dtype=torch.float64)
    op = jacobian_operator(lambda z: c.expand_as(z), torch.zeros(2, 4, dtype=torch.float64))
    V = torch.ones(2, 2, 4, dtype=torch.float64)
    assert op(V).abs().max() == 0 and op.matvec(V).abs().max() == 0
    assert op.asymmetry(2, gen()).abs().max() == 0


def test_bad_inputs_raise_clear_errors():
    net = _net()
    x = torch.randn(2, 12, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"x must be a torch\.Tensor"):
        jacobian_operator(net, x.tolist())
    with pytest.raises(ValueError, match=r"add a batch dimension with x\[None\]"):
        jacobian_operator(net, x[0])
    with pytest.raises(ValueError, match="floating-point"):
        jacobian_operator(net, torch.ones(2, 12, dtype=torch.int64))
    with pytest.raises(ValueError, match="fn must be callable"):
        jacobian_operator(None, x)
    bad = x.clone()
    bad[1, 3] = float("nan")
    with pytest.raises(ValueError, match=r"x contains NaN/inf for sample\(s\) \[1\]"):
        jacobian_operator(net, bad)
    with pytest.raises(ValueError, match="same shape as x"):
        jacobian_operator(lambda z: z[:, :5], x)
    with pytest.raises(ValueError, match="same shape as its input"):
        jacobian_operator(lambda z: (z, z), x)
    with pytest.raises(ValueError, match=r"fn\(x\) is not finite .* sample\(s\) \[0\]"):
        jacobian_operator(lambda z: z / (z[:, :1] - x[0, 0]), x)
    with pytest.raises(ValueError, match="chunk_size must be an int >= 1"):
        jacobian_operator(net, x, chunk_size=0)
    op = jacobian_operator(net, x)
    with pytest.raises(ValueError, match=r"V must have shape \[B, m, \*shape\] = \[2, m, 12\]"):
        op(torch.ones(2, 12, dtype=torch.float64))
    with pytest.raises(ValueError, match="num_probes must be an int >= 1"):
        op.asymmetry(0)
    kink = jacobian_operator(lambda z: z.abs().sqrt(), torch.tensor([[1.0, 2.0], [0.0, 1.0]]))
    with pytest.raises(FloatingPointError, match=r"sample\(s\) \[1\]"):
        kink(torch.ones(2, 1, 2))


def test_rowwise_false_supports_per_sample_side_data():
    net = _net()
    x = torch.randn(3, 12, generator=gen(), dtype=torch.float64)
    labels = torch.tensor([[0.5], [-1.0], [2.0]], dtype=torch.float64)  # one per sample: not row-wise

    def fn(z):
        assert z.shape[0] == 3, "fn must only see the B original rows"
        return net(z) * labels

    def rowwise_fn(z):  # the same map, written row-wise for the reference
        return net(z) * labels.repeat_interleave(z.shape[0] // 3, dim=0)

    op = jacobian_operator(fn, x, rowwise=False)
    ref = jacobian_operator(rowwise_fn, x)
    V = torch.randn(3, 4, 12, generator=gen(1), dtype=torch.float64)
    for product in ("__call__", "matvec", "rmatvec"):
        torch.testing.assert_close(getattr(op, product)(V), getattr(ref, product)(V))
    assert op.num_matvecs == 12
    with pytest.raises(ValueError, match="chunk_size needs rowwise=True"):
        jacobian_operator(fn, x, chunk_size=2, rowwise=False)


@pytest.mark.parametrize("rowwise", [True, False])
def test_forward_mode_jvp_matches_the_dense_jacobian(case, rowwise):
    _, fn, x, S = case
    J = dense_jacobian(fn, x)
    V = torch.randn(x.shape[0], 3, x.shape[1], generator=gen(), dtype=x.dtype)
    op = jacobian_operator(fn, x, jvp="forward", rowwise=rowwise)
    torch.testing.assert_close(op.matvec(V), V @ J.mT)
    torch.testing.assert_close(op.matvec(V[:, :1]), V[:, :1] @ J.mT)
    torch.testing.assert_close(op(V), V @ S.mT)
    torch.testing.assert_close(jacobian_operator(fn, x, jvp="forward", chunk_size=4).matvec(V), V @ J.mT)


def test_forward_mode_through_group_norm_and_convolutions():
    """GroupNorm (per-sample statistics) and convolutions support forward-mode AD under vmap."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.GroupNorm(2, 4), torch.nn.SiLU(),
                              torch.nn.Conv2d(4, 2, 3, padding=1)).double().eval()
    x = torch.randn(2, 2, 4, 4, generator=gen(), dtype=torch.float64)
    V = torch.randn(2, 3, 2, 4, 4, generator=gen(1), dtype=torch.float64)
    forward = jacobian_operator(net, x, jvp="forward")
    torch.testing.assert_close(forward.matvec(V), jacobian_operator(net, x).matvec(V))


def test_product_counts_and_views():
    """num_jacobian_products: 1 per J v or J^T v, 2 per symmetric product; views share the counter."""
    net = _net()
    x = torch.randn(3, 12, generator=gen(), dtype=torch.float64)
    J = dense_jacobian(net, x)
    op = jacobian_operator(net, x)
    V = torch.randn(3, 4, 12, generator=gen(1), dtype=torch.float64)
    op(V)
    op.matvec(V[:, :1])
    assert op.num_jacobian_products == 2 * 4 + 1
    torch.testing.assert_close(op.view("JT")(V), V @ J)
    torch.testing.assert_close(op.view("J")(V), V @ J.mT)
    assert op.num_jacobian_products == 9 + 4 + 4
    op.asymmetry(num_probes=2, generator=gen())
    assert op.num_jacobian_products == 17 + 4
    with pytest.raises(ValueError, match="product must be one of"):
        op.view("JJ")
    with pytest.raises(ValueError, match="jvp must be one of"):
        jacobian_operator(net, x, jvp="fwd")
