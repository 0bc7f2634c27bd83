"""One core, three training loops: a plain PyTorch loop, an accelerate loop and the Lightning callback get the same
check values, the same stop step and the same final (restored) weights on the same model, data and seed.

The three loops take the same optimizer steps bit for bit: the same initial weights (``make_module`` seeds them),
the same batches (the datamodule's sampler has its own generator; every loop opens one loader iterator per epoch,
which draws its base seed from the global RNG, as Lightning does), and the same global-RNG draws for timesteps and
noise in the same order (a check restores every RNG it touches). On one CPU thread the kernels are deterministic,
so the weights at every check are identical and the check values are compared with ``==``, not to a tolerance.
The stop rule watches ``effective_dim`` (it falls steadily while the tiny model fits), with a threshold midway
between two consecutive checks, so the stop fires within a few dozen steps.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from tiny_training import make_data, make_module, make_trainer
from torch import Tensor, nn

from memcallback import MemorizationMonitor, MemorizationWatch, ProbeConfig, SharpnessConfig, StopConfig
from memcallback.app.data import DigitsDataModule
from memcallback.app.models import DiffusionModule

MAX_STEPS, EVERY = 40, 4
SETTINGS = dict(probes=ProbeConfig(num_samples=8, num_sampling_steps=5, reference_images=8, loss_gap_images=8),
                sharpness=SharpnessConfig(k=4),
                stop=StopConfig(monitor="memorization/effective_dim", mode="min", threshold=63.945, min_delta=0.0,
                                restore_safe_weights=True))
#: keys that differ between loops by design: wall-clock time, and the epoch only Lightning records.
NOT_COMPARED = ("seconds", "overhead", "epoch")


def loss(module: DiffusionModule, network: nn.Module, x0: Tensor) -> Tensor:
    """``DiffusionModule.training_step``'s loss for an unconditional network, drawing ``t`` then the noise."""
    t = torch.randint(0, module.schedule.num_timesteps, (x0.shape[0],), device=x0.device)
    noise = torch.randn_like(x0)
    return F.mse_loss(network(module.schedule.add_noise(x0, noise, t), t, None), module.target(x0, noise, t))


def batches(loader) -> Iterator[Tensor]:
    """The images of every batch, epoch after epoch (one loader iterator per epoch)."""
    while True:
        for x0, _ in loader:
            yield x0


def setup() -> tuple[DiffusionModule, DigitsDataModule, torch.optim.Optimizer]:
    module, data = make_module(), make_data()
    data.setup("fit")
    return module, data, module.configure_optimizers()


def plain_loop() -> tuple[MemorizationWatch, DiffusionModule]:
    module, data, optimizer = setup()
    watch = MemorizationWatch(every_n_steps=EVERY, **SETTINGS)
    watch.setup(module, train_data=data.unique_train_data(), heldout_data=data.heldout_data())
    for step, x0 in enumerate(batches(data.train_dataloader())):
        if (watch.due(step) and watch.check(module, step).stop) or step == MAX_STEPS:
            break
        optimizer.zero_grad()
        loss(module, module.network, x0).backward()
        optimizer.step()
    return watch, module


def accelerate_loop() -> tuple[MemorizationWatch, DiffusionModule]:
    from accelerate import Accelerator

    from memcallback.adapters import AcceleratedWatch

    module, data, optimizer = setup()
    accelerator = Accelerator(cpu=True)
    network, optimizer, loader = accelerator.prepare(module.network, optimizer, data.train_dataloader())
    watch = AcceleratedWatch(MemorizationWatch(every_n_steps=EVERY, **SETTINGS), accelerator)
    watch.setup(module, train_data=data.unique_train_data(), heldout_data=data.heldout_data())
    for step, x0 in enumerate(batches(loader)):
        if watch.after_step(step) or step == MAX_STEPS:
            break
        optimizer.zero_grad()
        accelerator.backward(loss(module, network, x0))
        optimizer.step()
    return watch.watch, module


def lightning_loop(tmp_path) -> tuple[MemorizationWatch, DiffusionModule]:
    module = make_module()
    monitor = MemorizationMonitor(every_n_train_steps=EVERY, save_plot=False, media="none", **SETTINGS)
    trainer = make_trainer(tmp_path, [monitor], max_steps=MAX_STEPS)
    trainer.fit(module, datamodule=make_data())
    assert trainer.global_step == monitor.stopped_step
    return monitor.watch, module


def compared(history: list[dict[str, float]]) -> list[dict[str, float | None]]:
    """The history without the keys that differ by design; NaN (e.g. AUROC with one class) as None, so == works."""
    return [{k: None if math.isnan(v) else v for k, v in row.items() if k not in NOT_COMPARED} for row in history]


def test_plain_accelerate_and_lightning_loops_check_and_stop_alike(tmp_path) -> None:
    pytest.importorskip("accelerate")
    loops = {"plain": plain_loop(), "accelerate": accelerate_loop(), "lightning": lightning_loop(tmp_path)}
    reference, module = loops.pop("lightning")
    assert reference.stopped_step is not None and 0 < reference.stopped_step < MAX_STEPS  # the stop fired
    assert reference.safe_step == reference.stopped_step - EVERY
    assert [row["step"] for row in reference.history] == list(range(0, reference.stopped_step + 1, EVERY))
    # the datamodule's held-out images reach every loop
    assert all(math.isfinite(row["sharpness_gap"]) and math.isfinite(row["loss_gap"]) for row in reference.history)
    weights = module.state_dict()
    for name, (watch, trained) in loops.items():
        assert compared(watch.history) == compared(reference.history), name
        assert (watch.stopped_step, watch.safe_step) == (reference.stopped_step, reference.safe_step), name
        assert [k for k, v in trained.state_dict().items() if not torch.equal(v, weights[k])] == [], name
