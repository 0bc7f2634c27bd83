"""Reference networks: shapes, conditioning, independence of rows, clear errors."""

import pytest
import torch

from memcallback.app.models import ResidualMLP, SmallUNet

NETWORKS = [
    lambda: ResidualMLP((2,), hidden=32, num_blocks=2, time_embed_dim=16),
    lambda: ResidualMLP((1, 8, 8), hidden=32, num_blocks=1, time_embed_dim=16, num_classes=10),
    lambda: ResidualMLP((3,), hidden=16, norm="none"),
    lambda: SmallUNet((1, 8, 8), base_channels=8, channel_mults=(1, 2)),
    lambda: SmallUNet((3, 8, 4), base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=2, num_classes=3),
]


def _inputs(net, batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *net.data_shape, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    cond = torch.arange(batch) % net.num_classes if net.num_classes else None
    return x, t, cond


@pytest.mark.parametrize("make", NETWORKS)
def test_output_has_input_shape(make):
    net = make()
    x, t, cond = _inputs(net)
    out = net(x, t, cond)
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("make", NETWORKS)
def test_rows_are_independent(make):
    """v^T d out_i / d x_j = 0 for i != j (no batch statistics) and != 0 for i = j, for a random cotangent v."""
    torch.manual_seed(0)
    net = make().train()
    x, t, cond = _inputs(net)
    x.requires_grad_(True)
    out = net(x, t, cond)
    for i in range(x.shape[0]):
        (grad,) = torch.autograd.grad((out[i] * torch.randn_like(out[i])).sum(), x, retain_graph=True)
        for j in range(x.shape[0]):
            assert (grad[j].abs().max() > 0) if i == j else torch.equal(grad[j], torch.zeros_like(grad[j]))


@pytest.mark.parametrize("make", [NETWORKS[1], NETWORKS[4]])
def test_null_condition_is_label_minus_one(make):
    net = make()
    x, t, _ = _inputs(net)
    null = net(x, t, None)
    assert torch.equal(null, net(x, t, torch.full((x.shape[0],), -1)))
    assert not torch.allclose(null, net(x, t, torch.zeros(x.shape[0], dtype=torch.long)))


def test_conditioning_errors_are_clear():
    cond_net, plain_net = NETWORKS[1](), NETWORKS[0]()
    x, t, _ = _inputs(cond_net)
    with pytest.raises(ValueError, match=r"\[0, 9\] or be -1"):
        cond_net(x, t, torch.tensor([0, 10, 1]))
    with pytest.raises(ValueError, match="shape"):
        cond_net(x, t, torch.tensor([0, 1]))
    x, t, _ = _inputs(plain_net)
    with pytest.raises(ValueError, match="unconditional"):
        plain_net(x, t, torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: SmallUNet((1, 6, 6), channel_mults=(1, 2, 2)), "divisible by 4"),
        (lambda: SmallUNet((64,)), r"\(C, H, W\)"),
        (lambda: SmallUNet((1, 8, 8), channel_mults=()), "channel_mults"),
        (lambda: ResidualMLP(()), "data_shape"),
        (lambda: ResidualMLP((2,), norm="batch"), "norm"),
        (lambda: ResidualMLP((2,), time_embed_dim=7), "even"),
        (lambda: ResidualMLP((2,), num_classes=0), "num_classes"),
    ],
)
def test_bad_arguments_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("make", NETWORKS)
def test_init_kwargs_rebuild_the_network(make):
    net = make()
    clone = type(net)(**net.init_kwargs)
    assert [p.shape for p in clone.parameters()] == [p.shape for p in net.parameters()]
