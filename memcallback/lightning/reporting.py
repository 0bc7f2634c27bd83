"""Where a check's outputs go under Lightning: every logger, ``trainer.callback_metrics``, the safe checkpoint."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch


def log_scalars(trainer: pl.Trainer, metrics: dict[str, float], step: int) -> None:
    """Send ``metrics`` to every logger at ``step`` and into ``trainer.callback_metrics``.

    Like Lightning's ``LearningRateMonitor``, this logs through the loggers directly rather than
    ``pl_module.log``: the monitor runs in hooks where ``self.log`` is not allowed (train start, ``validate``),
    its values must land at the exact global step whatever ``log_every_n_steps`` is, and pushing them into
    ``callback_metrics`` keeps them monitorable by ``ModelCheckpoint``. The values are already global (reduced
    over ranks), so every rank writes the same ones.
    """
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=step)
    set_callback_metrics(trainer, metrics)


def set_callback_metrics(trainer: pl.Trainer, metrics: dict[str, float]) -> None:
    """Make ``metrics`` visible to other callbacks (``ModelCheckpoint(monitor=...)``) as scalar tensors."""
    device = trainer.strategy.root_device
    for name, value in metrics.items():
        trainer.callback_metrics[name] = torch.tensor(value, device=device)


def safe_checkpoint_path(trainer: pl.Trainer) -> Path:
    """``safe.ckpt`` beside the trainer's checkpoints: in the first ``ModelCheckpoint``'s ``dirpath`` (where
    ``last.ckpt`` goes), else in ``default_root_dir/checkpoints``."""
    callback = trainer.checkpoint_callback
    directory = getattr(callback, "dirpath", None) or Path(trainer.default_root_dir) / "checkpoints"
    return Path(directory) / "safe.ckpt"


def log_run_summary(trainer: pl.Trainer, values: dict[str, float]) -> None:
    """Write ``values`` into the run summary of every W&B logger (``run.summary``), on rank 0."""
    from lightning.pytorch.loggers import WandbLogger

    if not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.summary.update(values)
