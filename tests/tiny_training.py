"""A tiny reference model, data and trainer for callback tests: milliseconds per step on a CPU."""

from __future__ import annotations

import socket

import lightning.pytorch as pl
import pytest

from memcallback.app.data import DigitsDataModule
from memcallback.app.models import DiffusionModule, ResidualMLP
from memcallback.lightning.callback import MemorizationMonitor


def make_module(ema_decay: float | None = None) -> DiffusionModule:
    pl.seed_everything(0, verbose=False)
    return DiffusionModule(ResidualMLP((1, 8, 8), hidden=32, num_blocks=1, time_embed_dim=16),
                           num_timesteps=100, ema_decay=ema_decay)


def make_data() -> DigitsDataModule:
    return DigitsDataModule(batch_size=16, num_train=16, samples_per_epoch=64, seed=0)


def make_trainer(tmp_path, callbacks=(), **kwargs) -> pl.Trainer:
    defaults = dict(default_root_dir=tmp_path, accelerator="cpu", devices=1, max_steps=6, logger=False,
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                    num_sanity_val_steps=0, limit_val_batches=0, deterministic=True)
    defaults.update(kwargs)
    return pl.Trainer(callbacks=list(callbacks), **defaults)


def free_port() -> int:
    """A loopback TCP port that is free right now (MASTER_PORT of a DDP subprocess)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scripted(monkeypatch: pytest.MonkeyPatch, values: list[float]) -> None:
    """Make every check report the next value of ``values`` as the score (the measurement still runs)."""
    it = iter(values)
    original = MemorizationMonitor._reduce

    def fake_reduce(self, report, device):
        out = original(self, report, device)
        out["score"] = next(it)
        return out

    monkeypatch.setattr(MemorizationMonitor, "_reduce", fake_reduce)
