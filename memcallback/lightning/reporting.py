"""Where a check's scalars go: every Lightning logger, ``trainer.callback_metrics`` and one console line."""

from __future__ import annotations

import math

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


def console_line(values: dict[str, float], step: int) -> str:
    """The one-line summary of a check, e.g. ``[memorization] step 1250 | score 0.127 | flagged 0% | ...``."""
    parts = [f"step {step}", f"score {values['score']:.3f}", f"flagged {values['flagged_fraction']:.0%}",
             f"d_eff {values['effective_dim']:.1f}", f"mu_max {values['mu_max']:.3f}"]
    if "nn_rate" in values:
        parts.append(f"nn-rate {values['nn_rate']:.0%}")
    if not math.isnan(values.get("auroc", math.nan)):
        parts.append(f"AUROC {values['auroc']:.3f}")
    parts.append(f"{values['seconds']:.2f} s")
    return "[memorization] " + " | ".join(parts)
