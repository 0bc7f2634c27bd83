"""MemorizationMonitor: the Lightning callback over the monitoring core (hooks, loggers, checkpoints, ranks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from memcallback.arguments import is_int, require
from memcallback.core.governor import GovernorConfig
from memcallback.core.measurement import Measurement, MeasureRequest, measure
from memcallback.core.probes import ProbeConfig
from memcallback.core.result import CheckResult
from memcallback.core.stopping import StopConfig, StopRule
from memcallback.core.watch import MemorizationWatch
from memcallback.core.weights import AveragedWeights
from memcallback.diffusion import DiffusionModel, check_model
from memcallback.lightning.distributed import StrategyReducer
from memcallback.lightning.reporting import log_run_summary, log_scalars, safe_checkpoint_path, set_callback_metrics
from memcallback.measure import names
from memcallback.measure.conditional import ConditionalConfig
from memcallback.measure.sharpness import SharpnessConfig
from memcallback.viz.wandb_media import MEDIA


class MemorizationMonitor(Callback):
    r"""Watch a diffusion model for memorization while it trains, and stop training when it rises.

    The Lightning face of :class:`~memcallback.core.MemorizationWatch` (which any training loop can use directly):
    at every check the probe set is sampled with deterministic DDIM, the sharpness of the learned density around
    each probe is measured, and ``memorization/...`` scalars go to every logger at the trainer's global step and
    into ``trainer.callback_metrics`` (so ``ModelCheckpoint`` can monitor them). Under DDP the scalars cover
    every rank's probes, the media rank 0's share. Training is never perturbed: with the monitor on, trained
    weights are bit-identical to a run without it. Failed checks are skipped, counted and warned about once;
    a check cut short by ``time_budget_s`` is kept and logged with ``partial = 1`` (see ``docs/reliability.md``).

    **Safe checkpoint.** The last check at which the stop rule did not alarm is the *safe* one
    (``safe_step``). When checkpointing is enabled, the callback writes ``safe.ckpt`` (a full Lightning checkpoint
    of the weights measured at that check) beside the other checkpoints at every safe check; with
    ``stop.restore_safe_weights`` the safe weights are loaded back into the model when the rule fires. The
    end-of-fit console line and the W&B run summary name the safe step.

    **Weight averaging.** With Lightning's ``WeightAveraging`` / ``EMAWeightAveraging`` among the callbacks and
    ``weights="ema"`` (the default), a check measures the averaged model, which the averaging callback swaps in only
    for validation and copies into the model at the end of training; the safe weights keep and restore both, so the
    model that ``fit`` ends with after a stop is the safe average. ``weights="raw"`` measures the trained weights.

    **Privacy.** With the default ``media="charts"`` no image reaches a logger: generated samples of a
    memorizing model are near copies of training images. ``media="images"`` adds them, beside their nearest
    training images; turn it on for public data only.

    The model must implement :class:`memcallback.DiffusionModel`.

    Args:
        every_n_train_steps: check every this many optimizer steps (exclusive with ``every_n_epochs``).
        every_n_epochs: check at the end of every this many training epochs.
        check_on_train_start: measure the untrained model first (the baseline the stop rule compares to).
        probes: the probe set and where it is measured (:class:`~memcallback.core.ProbeConfig`).
        sharpness: solver and score settings (:class:`~memcallback.measure.SharpnessConfig`).
        stop: the stop rule and what to do when it fires (:class:`~memcallback.core.StopConfig`).
        conditions: the paper's conditional metrics per class label of a conditional model
            (:class:`~memcallback.measure.ConditionalConfig`), logged as ``cond/hds``, ``cond/sd_norm``,
            ``cond/cond{i}/...`` and ``cond/sharpest_condition``; ``None``: the unconditional measurement only.
        ground_truth: with a datamodule that has ``unique_train_data()``, also log the nearest-neighbour
            memorization rate and the AUROC of the score against it, and when it also has ``heldout_data()``
            the sharpness gap (``probes.reference_images`` of each), the loss gap (``probes.loss_gap_images``) and
            the copy flag's null (``probes.copy_null_images``); only scalars are logged.
        time_budget_s: a check running longer is cut short and kept as partial (``None``: no budget).
        governor: what the checks may add to the training wall time, and what they may skip to keep it
            (:class:`~memcallback.core.GovernorConfig`; on by default at 5%, ``max_overhead=None``: off).
        media: W&B media with a ``WandbLogger``: ``"none"``, ``"charts"`` or ``"images"`` (see ``MEDIA``).
        num_media_samples: most memorized samples shown with ``media="images"``.
        save_plot: write ``memorization.png`` with the curves over training into the run directory at the end.
        prefix: namespace of every logged key.
        weights: ``"ema"`` or ``"raw"``, which weights a check measures when a ``WeightAveraging`` callback keeps an
            average (see :data:`memcallback.core.weights.WEIGHTS`).
    """

    def __init__(
        self,
        *,
        every_n_train_steps: int | None = 250,
        every_n_epochs: int | None = None,
        check_on_train_start: bool = True,
        probes: ProbeConfig = ProbeConfig(),  # noqa: B008  (frozen dataclasses: the defaults live there)
        sharpness: SharpnessConfig = SharpnessConfig(),  # noqa: B008
        stop: StopConfig = StopConfig(),  # noqa: B008
        conditions: ConditionalConfig | None = None,
        ground_truth: bool = True,
        time_budget_s: float | None = None,
        governor: GovernorConfig = GovernorConfig(),  # noqa: B008
        media: str = "charts",
        num_media_samples: int = 16,
        save_plot: bool = True,
        prefix: str = names.PREFIX,
        weights: str = "ema",
    ) -> None:
        super().__init__()
        for name, value, kind in (("probes", probes, ProbeConfig), ("sharpness", sharpness, SharpnessConfig),
                                  ("stop", stop, StopConfig), ("governor", governor, GovernorConfig)):
            require(isinstance(value, kind), name, value, f"a {kind.__name__}, e.g. {kind.__name__}()")
        for name, value in (("ground_truth", ground_truth), ("save_plot", save_plot)):
            require(isinstance(value, bool), name, value, "True or False")
        require(isinstance(media, str) and media in MEDIA, "media", media, f"one of {MEDIA}")
        require(is_int(num_media_samples) and num_media_samples >= 1, "num_media_samples", num_media_samples,
                "an int >= 1")
        self.watch = MemorizationWatch(
            every_n_steps=every_n_train_steps, every_n_epochs=every_n_epochs, check_at_start=check_on_train_start,
            probes=probes, sharpness=sharpness, stop=stop, conditions=conditions, time_budget_s=time_budget_s,
            governor=governor, prefix=prefix, measure_fn=self.measure, on_safe=self._write_safe_checkpoint,
            weights=weights)
        self.ground_truth, self.media, self.num_media_samples = ground_truth, media, num_media_samples
        self.save_plot = save_plot
        self._trainer: pl.Trainer | None = None
        self._media_failure_reported = False

    def measure(self, model: DiffusionModel, request: MeasureRequest) -> Measurement:
        """One measurement (default: :func:`memcallback.core.measure`); override it to measure differently."""
        return measure(model, request)

    # settings and state, as the core keeps them
    @property
    def probes(self) -> ProbeConfig:
        return self.watch.probes

    @property
    def sharpness(self) -> SharpnessConfig:
        return self.watch.sharpness

    @property
    def stop(self) -> StopConfig:
        return self.watch.stop

    @property
    def governor(self) -> GovernorConfig:
        return self.watch.governor_config

    @property
    def conditions(self) -> ConditionalConfig | None:
        return self.watch.conditions

    @property
    def rule(self) -> StopRule:
        return self.watch.rule

    @property
    def history(self) -> list[dict[str, float]]:
        return self.watch.history

    @property
    def failures(self) -> int:
        return self.watch.failures

    @property
    def stopped_step(self) -> int | None:
        return self.watch.stopped_step

    @property
    def safe_step(self) -> int | None:
        return self.watch.safe_step

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.stop.monitor, mode=self.stop.mode)

    # ------------------------------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        model = check_model(pl_module)
        datamodule = getattr(trainer, "datamodule", None)
        data_shape = getattr(datamodule, "data_shape", None)  # Lightning sets the datamodule up before callbacks
        if data_shape is not None and tuple(data_shape) != tuple(model.data_shape):
            raise ValueError(f"The datamodule serves samples of shape {tuple(data_shape)} but the model's data_shape "
                             f"is {tuple(model.data_shape)}; make them agree.")
        train = heldout = None
        if self.ground_truth and hasattr(datamodule, "unique_train_data"):
            train = datamodule.unique_train_data().to(pl_module.device)
            if (self.watch.probes.uses_heldout and hasattr(datamodule, "heldout_data")
                    and len(held := datamodule.heldout_data()) > 0):
                heldout = held.to(pl_module.device)
        self._trainer = trainer
        self.watch.setup(pl_module, train_data=train, heldout_data=heldout, rank=trainer.global_rank,
                         world_size=trainer.world_size,
                         reducer=StrategyReducer(trainer.strategy), sharded=_is_sharding(trainer.strategy),
                         averaged=_averaged_weights(trainer, pl_module, self.watch.weights) if stage == "fit" else None)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step == 0:
            if self.watch.check_at_start:
                self._check(trainer, pl_module, can_stop=True)  # the baseline sets the stop rule's best value
        elif self.history:  # resumed: make the last value of every key monitorable again until the next check
            last = {k: v for row in self.history for k, v in row.items() if k not in ("step", "epoch")}
            set_callback_metrics(trainer, {f"{self.watch.prefix}{name}": value for name, value in last.items()})

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step > 0 and self.watch.due(trainer.global_step):
            self._check(trainer, pl_module, can_stop=True)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.watch.due_at_epoch_end(trainer.current_epoch, trainer.global_step):
            self._check(trainer, pl_module, can_stop=True)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "validate" and not trainer.sanity_checking:
            self._check(trainer, pl_module, can_stop=False)

    # ------------------------------------------------------------------------------------------------------
    def _check(self, trainer: pl.Trainer, pl_module: pl.LightningModule, can_stop: bool) -> None:
        step = trainer.global_step
        result = self.watch.check(pl_module, step, epoch=trainer.current_epoch, can_stop=can_stop)
        log_scalars(trainer, result.metrics(), step)
        if result.failed:
            return
        # a light check has no report, a cut-short one may have no statistics
        if self.media != "none" and trainer.is_global_zero and result.report is not None and result.report.stats:
            self._log_media(trainer, result)
        rank_zero_info(result.message)
        if not result.fired:
            return
        if result.stop:
            trainer.should_stop = True
            rank_zero_info(f"{result.reason} Stopping training.")
        else:
            rank_zero_warn(f"{result.reason} (stop_training=False: training goes on.)")
        if self.stop.restore_safe_weights:
            self._restore(trainer, pl_module, result)
        for logger in trainer.loggers:
            logger.log_metrics({f"{self.watch.prefix}{names.STOPPED}": 1.0}, step=step)

    def _restore(self, trainer: pl.Trainer, pl_module: pl.LightningModule, result: CheckResult) -> None:
        """Load the safe weights: the core's host copy, else (after a resume) ``safe.ckpt``."""
        path = safe_checkpoint_path(trainer)
        if not result.restored and path.is_file():
            try:
                checkpoint = trainer.strategy.load_checkpoint(path)
                averaging = _averaging_callback(trainer)
                if "current_model_state" in checkpoint:  # written with WeightAveraging: state_dict is the average
                    pl_module.load_state_dict(checkpoint["current_model_state"])
                    if averaging is not None:
                        _average_module(averaging).load_state_dict(checkpoint["state_dict"])
                else:
                    pl_module.load_state_dict(checkpoint["state_dict"])
                result.restored = True
            except Exception as err:  # a safe checkpoint that cannot be read must not end the run
                rank_zero_warn(f"MemorizationMonitor: {path} could not be restored ({type(err).__name__}: {err}).")
        if result.restored:
            rank_zero_info(f"[memorization] weights of the last safe check (step {self.safe_step}) restored.")
        else:
            rank_zero_warn("MemorizationMonitor: restore_safe_weights=True but no safe weights are kept (no safe "
                           "check since the start or resume, and no safe.ckpt); the model keeps its last weights.")

    def _write_safe_checkpoint(self, step: int) -> None:
        """At every safe check, with checkpointing enabled: ``safe.ckpt`` of the weights just measured."""
        trainer = self._trainer
        if trainer is not None and trainer.checkpoint_callback is not None and trainer.state.fn == "fit":
            trainer.save_checkpoint(safe_checkpoint_path(trainer))

    def _log_media(self, trainer: pl.Trainer, result: CheckResult) -> None:
        from lightning.pytorch.loggers import WandbLogger

        from memcallback.viz.wandb_media import log_media

        for logger in trainer.loggers:
            if not isinstance(logger, WandbLogger):
                continue
            try:
                log_media(logger.experiment, result.report, self.watch.train_data, step=result.step,
                          prefix=self.watch.prefix, num_images=self.num_media_samples, images=self.media == "images")
            except Exception as err:  # media are a convenience: never let them end a training run
                if not self._media_failure_reported:
                    rank_zero_warn(f"MemorizationMonitor: W&B media could not be logged ({type(err).__name__}: "
                                   f"{err}); scalars are unaffected. Set media='none' to skip them.")
                    self._media_failure_reported = True

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank must ask
        if self.safe_step is not None:
            log_run_summary(trainer, {f"{self.watch.prefix}{names.SAFE_STEP}": self.safe_step})
            where = safe_checkpoint_path(trainer)
            rank_zero_info(f"[memorization] last safe check: step {self.safe_step}"
                           + (f" (weights in {where})" if where.is_file() else ""))
        if not (self.save_plot and self.history and trainer.is_global_zero):
            return
        from memcallback.viz.plots import plot_history

        path = Path(log_dir or trainer.default_root_dir) / "memorization.png"
        plot_history(self.history, path, monitor=self.watch.monitor, prefix=self.watch.prefix,
                     threshold=self.rule.threshold, stopped_step=self.stopped_step)
        rank_zero_info(f"[memorization] curves over training written to {path}")

    def state_dict(self) -> dict[str, Any]:
        return self.watch.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.watch.load_state_dict(state_dict)


def _averaged_weights(trainer: pl.Trainer, pl_module: pl.LightningModule, weights: str) -> AveragedWeights | None:
    """The average of a ``WeightAveraging`` callback among the trainer's callbacks (``None`` without one), kept with
    the safe weights and, with ``weights="ema"``, measured. Its ``AveragedModel`` is created in the callback's own
    ``setup``, so it is read when a check needs it."""
    averaging = _averaging_callback(trainer)
    if averaging is None:
        return None
    monitors = [i for i, c in enumerate(trainer.callbacks) if isinstance(c, MemorizationMonitor)]
    if weights == "ema" and monitors and monitors[0] < trainer.callbacks.index(averaging):
        raise ValueError(f"MemorizationMonitor comes before {type(averaging).__name__} in the callbacks, so a check "
                         "would measure the average of the step before; put it after the averaging callback, or set "
                         "weights='raw'.")
    return AveragedWeights.from_modules(lambda: _average_module(averaging), pl_module)


def _averaging_callback(trainer: pl.Trainer) -> Callback | None:
    """The trainer's ``WeightAveraging`` callback (``None`` without one; more than one is refused)."""
    from lightning.pytorch.callbacks import WeightAveraging

    averaging = [c for c in trainer.callbacks if isinstance(c, WeightAveraging)]
    if len(averaging) > 1:
        raise ValueError(f"MemorizationMonitor found {len(averaging)} WeightAveraging callbacks; keep one, or set "
                         "weights='raw' to measure the trained weights.")
    return averaging[0] if averaging else None


def _average_module(averaging: Callback) -> torch.nn.Module:
    """The module holding a ``WeightAveraging`` callback's average."""
    model = averaging._average_model  # Lightning keeps the AveragedModel there (no public accessor in 2.6)
    if model is None:
        raise RuntimeError("WeightAveraging has not created its averaged model yet (it does so in setup).")
    return model.module


def _is_sharding(strategy: object) -> bool:
    """Whether the strategy shards the model, so that its forward is a collective."""
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

    return isinstance(strategy, (FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy))
