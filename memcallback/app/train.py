"""The training app behind ``train.py``: build everything from a Hydra config, train, check memorization."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from memcallback.diffusion import ddim_sample, randn
from memcallback.lightning import MemorizationMonitor
from memcallback.measure.ground_truth import memorization_labels


def _check_int(cfg: DictConfig, key: str, minimum: int, why: str) -> None:
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{key} must be an int >= {minimum} ({why}), got {value!r}.")


def validate(cfg: DictConfig) -> None:
    """Fail early, with a message naming the key, on values that would fail late or silently misbehave.

    Data, model and trainer arguments are validated by their constructors when instantiated.
    """
    _check_int(cfg, "trainer.max_steps", 1, "the training budget in optimizer steps")
    _check_int(cfg, "seed", 0, "the global seed")
    _check_int(cfg, "eval_samples", 0, "samples of the final memorization check; 0 skips it")
    _check_int(cfg, "eval_steps", 1, "DDIM steps of the final memorization check")
    _check_int(cfg, "eval_seed", 0, "seed of the final check's initial noise")
    if cfg.torch_threads is not None:
        _check_int(cfg, "torch_threads", 1, "intra-op CPU threads, or null for torch's default")
    ratio = cfg.copy_ratio
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 < ratio <= 1:
        raise ValueError(f"copy_ratio must be a number in (0, 1], got {ratio!r}.")


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a named group (``callbacks``, ``logger``) that has a ``_target_``."""
    if not group:
        return []
    return [instantiate(node) for node in group.values() if isinstance(node, DictConfig) and "_target_" in node]


def _fill_data_shape(cfg: DictConfig, data_shape: tuple[int, ...]) -> None:
    network = OmegaConf.select(cfg, "model.network")
    if isinstance(network, DictConfig) and OmegaConf.is_missing(network, "data_shape"):
        network.data_shape = list(data_shape)


@torch.no_grad()
def memorization_rate(
    model: pl.LightningModule, reference: torch.Tensor, num_samples: int, steps: int, seed: int, ratio: float
) -> float:
    """Fraction of ``num_samples`` DDIM samples (fixed initial noise) that copy an image of ``reference``.

    A sample copies one when ``d(nearest) / d(second nearest) < ratio`` (``memorization_labels``).
    """
    was_training = model.training
    model.eval()
    try:
        noise = randn((num_samples, *model.data_shape), torch.Generator().manual_seed(seed), model.device)
        samples = ddim_sample(model, noise, steps).sample.cpu()
    finally:
        model.train(was_training)
    return float(memorization_labels(samples, reference.cpu(), ratio=ratio).rate)


def log_config(loggers: list[Logger], cfg: DictConfig) -> None:
    """Record the whole resolved config (every interpolation filled in) as each logger's hyperparameters."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        logger.log_hyperparams(resolved)


def monitored_value(trainer: pl.Trainer) -> tuple[str | None, float | None]:
    """``(key, value)`` of what the ``MemorizationMonitor`` watches (its ``stop.monitor`` as resolved at setup: by
    default ``memorization/loss_gap`` with held-out data, ``memorization/score`` without) in
    ``trainer.callback_metrics`` at the end of training; ``(None, None)`` without that callback, and ``(key, None)``
    when it never logged the key."""
    for callback in trainer.callbacks:
        if isinstance(callback, MemorizationMonitor):
            value = trainer.callback_metrics.get(callback.watch.monitor)
            return callback.watch.monitor, None if value is None else float(value)
    return None, None


def _checkpoint_paths(trainer: pl.Trainer) -> tuple[str | None, str | None]:
    """``(latest, best)``: the newest checkpoint written (a ``last.ckpt`` or an unmonitored checkpoint) and the
    best one by a monitored metric. Lightning's ``save_last`` only refreshes ``last.ckpt`` when the monitored
    checkpoint improves, hence a separate unmonitored callback for the latest weights."""
    latest = best = None
    for callback in trainer.checkpoint_callbacks:
        if callback.monitor is None:
            latest = latest or callback.best_model_path or None
        else:
            best = best or callback.best_model_path or None
        latest = latest or callback.last_model_path or None
    return latest or best, best


def _wandb_dir(loggers: list[Logger]) -> str | None:
    """The W&B run folder (off rank 0 the experiment is a dummy without a real ``dir``)."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            files_dir = getattr(logger.experiment, "dir", None)
            if isinstance(files_dir, str):
                return str(Path(files_dir).parent)
    return None


def _finish_wandb(loggers: list[Logger]) -> None:
    if any(isinstance(logger, WandbLogger) for logger in loggers):
        import wandb

        wandb.finish()


def _format_summary(summary: Mapping[str, Any]) -> str:
    minutes, seconds = divmod(summary["wall_time_s"], 60)
    lines = [
        f"memcallback: {summary['task_name']} finished: {summary['global_step']} steps in "
        f"{int(minutes)}m{seconds:04.1f}s",
        f"  run folder    {summary['output_dir']}",
        f"  checkpoints   {summary['checkpoint'] or 'none'}",
    ]
    if summary["best_checkpoint"] and summary["best_checkpoint"] != summary["checkpoint"]:
        lines.append(f"  best (val)    {summary['best_checkpoint']}")
    if summary["wandb_dir"]:
        lines.append(f"  W&B files     {summary['wandb_dir']}  (upload later: wandb sync <that folder>)")
    if summary["monitor_value"] is not None:
        lines.append(f"  monitored     {summary['monitor']} = {summary['monitor_value']:.4f}")
    if "val/loss" in summary["metrics"]:
        lines.append(f"  val/loss      {summary['metrics']['val/loss']:.4f}")
    rate = summary["memorization_rate"]
    if rate is not None:
        lines.append(f"  memorized     {100 * rate:.1f}% of {summary['eval_samples']} DDIM-{summary['eval_steps']} "
                     f"samples copy one of the {summary['num_train_unique']} training images")
    return "\n".join(lines)


def run(cfg: DictConfig, output_dir: str | Path | None = None) -> dict[str, Any]:
    """Train the configured model, check it for memorization and return a summary.

    Args:
        cfg: the composed ``configs/train.yaml`` (from ``@hydra.main`` or the compose API).
        output_dir: the run folder; required under the compose API, where ``${hydra:runtime.output_dir}``
            does not resolve. Overrides ``cfg.paths.output_dir``.

    Returns:
        ``output_dir``, ``checkpoint`` (last), ``best_checkpoint``, ``metrics`` (final logged scalars),
        ``memorization_rate`` (``None`` when ``eval_samples == 0`` or off rank 0), ``monitor`` and
        ``monitor_value`` (see ``monitored_value``: what ``train.py`` returns to Hydra's sweepers),
        ``wandb_dir``, ``global_step``, ``wall_time_s`` and the evaluation settings.
    """
    start = time.perf_counter()
    if output_dir is not None:
        cfg.paths.output_dir = str(output_dir)
    validate(cfg)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_SILENT", "true")

    if cfg.torch_threads is not None:
        torch.set_num_threads(cfg.torch_threads)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    _fill_data_shape(cfg, datamodule.data_shape)
    model = instantiate(cfg.model)
    callbacks = instantiate_group(cfg.get("callbacks"))
    loggers = instantiate_group(cfg.get("logger"))
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    log_config(trainer.loggers, cfg)
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        rate = None
        if cfg.eval_samples > 0 and trainer.is_global_zero:
            rate = memorization_rate(model, datamodule.unique_train_data(), cfg.eval_samples, cfg.eval_steps,
                                     cfg.eval_seed, cfg.copy_ratio)
            for logger in trainer.loggers:
                logger.log_metrics({"eval/memorization_rate": rate}, step=trainer.global_step)
        latest, best = _checkpoint_paths(trainer)
        monitor, monitor_value = monitored_value(trainer)
        summary = {
            "task_name": cfg.task_name,
            "output_dir": str(out),
            "checkpoint": latest,
            "best_checkpoint": best,
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1},
            "memorization_rate": rate,
            "monitor": monitor,
            "monitor_value": monitor_value,
            "eval_samples": cfg.eval_samples,
            "eval_steps": cfg.eval_steps,
            "num_train_unique": len(datamodule.unique_train_data()),
            "wandb_dir": _wandb_dir(trainer.loggers),
            "global_step": trainer.global_step,
        }
        for logger in trainer.loggers:
            logger.finalize("success")
    finally:
        _finish_wandb(trainer.loggers)
    summary["wall_time_s"] = time.perf_counter() - start
    rank_zero_only(print)(_format_summary(summary))
    return summary
