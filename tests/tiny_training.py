"""A tiny reference model, data and trainer for callback tests (milliseconds per step on a CPU), and a monitor
whose memorization score follows a script through the public ``measure`` seam."""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence

import lightning.pytorch as pl

from memcallback import MemorizationMonitor
from memcallback.app.data import DigitsDataModule
from memcallback.app.models import DiffusionModule, ResidualMLP
from memcallback.core import Measurement, MeasureRequest


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


class ScriptedMonitor(MemorizationMonitor):
    """The real measurement at every check, with every probe's memorization score replaced by the next value of
    ``series`` (so the reduced ``score`` is that value); ``None`` in the series keeps the measured score.

    Args:
        series: the scores of consecutive checks, or a function of this rank returning them.
        **kwargs: the monitor's arguments.
    """

    def __init__(self, series: Sequence[float | None] | Callable[[int], Sequence[float | None]], **kwargs) -> None:
        super().__init__(**kwargs)
        self.series = series
        self.calls = 0

    def measure(self, model, request: MeasureRequest) -> Measurement:
        measured = super().measure(model, request)
        series = self.series(self.watch.probe_set.rank) if callable(self.series) else self.series
        value = series[self.calls]
        self.calls += 1
        if value is not None:
            measured.report.primary.memorization_score.fill_(value)
        return measured
