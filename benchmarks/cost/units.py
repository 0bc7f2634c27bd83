"""Unit costs of one check's pieces, in seconds and in forward-pass equivalents of the same network and batch.

Used by ``benchmarks/cost/check_cost.py``. Every timing is a median over ``repeats`` after one untimed warm-up, on
states of the model's own shape at the measurement timestep, inside ``measurement_mode`` (eval, math attention).
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from memcallback.diffusion import score_function
from memcallback.measure.analysis import measurement_mode
from memcallback.spectral import jacobian_operator


@dataclass(frozen=True)
class UnitCosts:
    """Seconds per call at ``batch`` rows (one vector per sample) and for one training step at batch 128."""

    batch: int
    forward: float  # no-grad forward of the batch (a sampling step)
    symmetric: float  # (J v + J^T v) / 2 on the cached graph: one double-backward J v + one VJP
    jvp_double_backward: float  # J v by double backward on the cached graph
    jvp_forward_mode: float | None  # J v by forward mode (jacobian_operator(jvp="forward"); None: unsupported)
    vjp: float  # J^T v: one reverse pass on the cached graph
    train_step: float  # forward + backward + Adam at batch 128 (see train_batch)
    train_batch: int  # batch the training step was timed at (scaled linearly to 128 when smaller)
    jvp_mismatch: float  # max |J v forward mode - J v double backward| / max |J v|

    def ratio(self, seconds: float | None) -> float:
        return float("nan") if seconds is None else seconds / self.forward


def median_seconds(call: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    call()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def synchronizer(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def unit_costs(model: nn.Module, network: nn.Module, timestep: int, batch: int, repeats: int,
               train_batch: int = 128) -> UnitCosts:
    """Times one forward, one symmetric product, ``J v`` both ways, one VJP, and one training step.

    Args:
        model: the :class:`~memcallback.DiffusionModel` the check measures.
        network: its trainable network ``(x_t, t) -> eps`` (a copy is trained for the step timing).
        timestep: the measurement timestep.
        batch: rows per product (the check's number of probes).
        repeats: timed calls per quantity.
        train_batch: batch of the timed training step; the reported step is scaled by ``128 / train_batch``.
    """
    device = next(model.parameters()).device
    sync = synchronizer(device)
    generator = torch.Generator().manual_seed(0)
    shape = tuple(model.data_shape)
    x = torch.randn((batch, *shape), generator=generator).to(device)
    v = torch.randn((batch, 1, *shape), generator=generator).to(device)
    fn = score_function(model, timestep)
    with measurement_mode(model):
        with torch.no_grad():
            forward = median_seconds(lambda: fn(x), repeats, sync)
        op = jacobian_operator(fn, x)
        symmetric = median_seconds(lambda: op(v), repeats, sync)
        double_backward = median_seconds(lambda: op.matvec(v), repeats, sync)
        vjp = median_seconds(lambda: op.rmatvec(v), repeats, sync)
        try:
            forward_op = jacobian_operator(fn, x, jvp="forward")
            forward_mode = median_seconds(lambda: forward_op.matvec(v), repeats, sync)
            reference = op.matvec(v)
            mismatch = ((forward_op.matvec(v) - reference).abs().max() / reference.abs().max()).item()
        except (RuntimeError, NotImplementedError) as error:
            print(f"forward-mode J v failed on {type(model).__name__}: {str(error)[:200]}", file=sys.stderr)
            forward_mode, mismatch = None, float("nan")
    step = train_step_seconds(model, network, min(train_batch, 128), repeats, sync)
    return UnitCosts(batch, forward, symmetric, double_backward, forward_mode, vjp, step * 128 / min(train_batch, 128),
                     min(train_batch, 128), mismatch)


def train_step_seconds(model: nn.Module, network: nn.Module, batch: int, repeats: int,
                       sync: Callable[[], None]) -> float:
    """Seconds of one DDPM training step (forward, backward, Adam) of a copy of ``network`` at ``batch``."""
    device = next(network.parameters()).device
    net = copy.deepcopy(network).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn((batch, *model.data_shape), generator=generator).to(device)
    t = torch.randint(0, model.schedule.num_timesteps, (batch,), generator=generator).to(device)
    noise = torch.randn(x0.shape, generator=generator).to(device)
    x_t = model.schedule.add_noise(x0, noise, t)

    def step() -> None:
        loss = F.mse_loss(predict(net, x_t, t), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return median_seconds(step, repeats, sync)


def predict(network: nn.Module, x_t: Tensor, t: Tensor) -> Tensor:
    """``network(x_t, t)`` for the reference networks and for diffusers UNets (``.sample``)."""
    out = network(x_t, t)
    return out.sample if hasattr(out, "sample") else out
