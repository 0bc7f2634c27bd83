"""MemorizationMonitor: the Lightning callback that watches a diffusion model for memorization."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from memcallback.arguments import check_monitor_arguments, is_int, require
from memcallback.core.aggregation import CheckAggregator
from memcallback.core.stopping import StopRule
from memcallback.diffusion import check_model
from memcallback.lightning.reporting import console_line, log_scalars, set_callback_metrics
from memcallback.measure.analysis import analyze, probe_noise, resolve_timesteps
from memcallback.measure.conditional import CONDITIONAL_SCALARS, conditional_report
from memcallback.measure.report import SharpnessReport
from memcallback.measure.sharpness import SharpnessConfig, SharpnessStats


class MemorizationMonitor(Callback):
    r"""Watch a diffusion model for memorization while it trains, and stop training when it rises.

    At every check the monitor samples a fixed probe set with deterministic DDIM, measures how sharp the
    learned density is around each probe's trajectory state ``x_t`` (the Hessian of ``log p_t`` is the
    Jacobian of the score, solved matrix-free or densely), and logs ``memorization/...`` scalars to every
    logger at the trainer's global step; with a ``WandbLogger`` it adds an eigenvalue histogram, the
    spectrum, the most memorized samples beside their nearest training images (a scatter plot for
    non-image data) and a per-sample table. Under DDP the scalars cover every rank's probes, the media
    rank 0's share.
    Scalars also go to ``trainer.callback_metrics`` so ``ModelCheckpoint`` can monitor them.

    The model must implement :class:`memcallback.DiffusionModel`. Training is never perturbed: the
    monitor draws from its own generator, restores train/eval flags, grad mode and global RNG states,
    and leaves no gradients behind; with it on, trained weights are bit-identical to a run without it.

    A check that raises (out of memory included), meets non-finite model outputs or overruns
    ``time_budget_s`` is a *failed* check: it is skipped on every rank, counted in ``check_failures``,
    warned about once, and training goes on. A check whose Lanczos solves stop short of ``tol`` is not a
    failure: its values are logged with ``converged_fraction < 1`` and a one-time warning. See
    ``docs/reliability.md``.

    Args:
        every_n_train_steps: check every this many optimizer steps (exclusive with ``every_n_epochs``).
        every_n_epochs: check at the end of every this many training epochs.
        check_on_train_start: measure the untrained model first (the baseline the stop rule compares to).
        num_samples: probes per check (sharded over DDP ranks); the same probes at every check.
        sigmas: measurement noise levels (mapped to the nearest timesteps); the first one is primary.
        timesteps: explicit measurement timesteps (placed before those from ``sigmas``).
        num_sampling_steps: DDIM steps used to draw the probes.
        k: flattest directions resolved per sample.
        solver: ``"auto"``, ``"dense"`` or ``"lanczos"`` (see :class:`~memcallback.measure.sharpness.SharpnessConfig`).
        lanczos_iters: Krylov steps per solve (``None``: solver default).
        tol: Lanczos tolerance.
        trace_probes: Hutchinson probes (matrix-free path).
        asymmetry_probes: probes for the asymmetry estimate (matrix-free path).
        min_eigenvalue: also solve for the sharpest direction (matrix-free path; free when dense).
        score_statistic: ``"top_mu"``, ``"effective_dim"`` or ``"flat_fraction"``.
        flag_threshold: per-sample score above which a sample counts as memorized.
        chunk_size: most vectors per network call (``None``: all at once).
        seed: seed of the probes and of all solver randomness.
        monitor: logged key the stop rule watches.
        mode: ``"max"`` if larger ``monitor`` values mean more memorization, else ``"min"``.
        threshold: level ``monitor`` must pass before the rule can fire (``None``: any rise counts).
        min_delta: how much worse than its best value ``monitor`` must be to count as risen.
        patience: consecutive risen checks that stop training.
        stop_training: stop the trainer when the rule fires; ``False`` only warns.
        ground_truth: with a datamodule that has ``unique_train_data()``, also log the nearest-neighbour
            memorization rate and the AUROC of the score against it.
        time_budget_s: a check slower than this is discarded as failed (``None``: no budget).
        log_media: log W&B media (histogram, spectrum, image grid, table) when a ``WandbLogger`` is attached.
        num_media_samples: most memorized samples shown in the image grid.
        save_plot: write ``memorization.png`` with the curves over training into the run directory at the end.
        prefix: namespace of every logged key.
        conditions: class labels of a conditional model to watch with the paper's detection metric: at every
            check, ``num_cond_samples`` fixed noises per label give ``||H^D s^D||`` and Wen et al.'s ``||s^D||``
            at the first sampling step, logged as ``{prefix}cond/hds``, ``cond/sd_norm``, per label
            ``cond/cond{i}/hds``, and ``cond/sharpest_condition`` (any of them can be the ``monitor``).
            ``None``: the unconditional measurement only (a conditional model is then measured with its
            null condition).
        num_cond_samples: noises per label for the conditional metrics.
        num_cond_generations: generations averaged per noise (the paper's 1 or 4).
    """

    def __init__(
        self,
        *,
        every_n_train_steps: int | None = 250,
        every_n_epochs: int | None = None,
        check_on_train_start: bool = True,
        num_samples: int = 64,
        sigmas: Sequence[float] = (0.1,),
        timesteps: Sequence[int] = (),
        num_sampling_steps: int = 50,
        k: int = 8,
        solver: str = "auto",
        lanczos_iters: int | None = None,
        tol: float = 1e-3,
        trace_probes: int = 16,
        asymmetry_probes: int = 4,
        min_eigenvalue: bool = True,
        score_statistic: str = "top_mu",
        flag_threshold: float = 0.39,
        chunk_size: int | None = None,
        seed: int = 0,
        monitor: str = "memorization/score",
        mode: str = "max",
        threshold: float | None = 0.1,
        min_delta: float = 0.05,
        patience: int = 1,
        stop_training: bool = True,
        ground_truth: bool = True,
        time_budget_s: float | None = None,
        log_media: bool = True,
        num_media_samples: int = 16,
        save_plot: bool = True,
        prefix: str = "memorization/",
        conditions: Sequence[int] | None = None,
        num_cond_samples: int = 16,
        num_cond_generations: int = 1,
    ) -> None:
        super().__init__()
        sigmas, timesteps = check_monitor_arguments(
            prefix=prefix, every_n_train_steps=every_n_train_steps, every_n_epochs=every_n_epochs,
            counts={"num_samples": num_samples, "num_sampling_steps": num_sampling_steps,
                    "num_media_samples": num_media_samples, "num_cond_samples": num_cond_samples,
                    "num_cond_generations": num_cond_generations},
            flags={"check_on_train_start": check_on_train_start, "stop_training": stop_training,
                   "ground_truth": ground_truth, "log_media": log_media, "save_plot": save_plot},
            seed=seed, sigmas=sigmas, timesteps=timesteps, time_budget_s=time_budget_s, monitor=monitor)
        require(conditions is None or (not isinstance(conditions, (str, bytes)) and isinstance(conditions, Sequence)
                                       and len(conditions) > 0 and all(is_int(c) and c >= 0 for c in conditions)),
                "conditions", conditions, "None or a non-empty list of class labels (ints >= 0), e.g. [0, 9]")
        self.conditions = None if conditions is None else tuple(conditions)
        self.num_cond_samples, self.num_cond_generations = num_cond_samples, num_cond_generations
        self.config = SharpnessConfig(k=k, solver=solver, lanczos_iters=lanczos_iters, tol=tol,
                                      trace_probes=trace_probes, asymmetry_probes=asymmetry_probes,
                                      min_eigenvalue=min_eigenvalue, score_statistic=score_statistic,
                                      flag_threshold=flag_threshold, chunk_size=chunk_size)
        self.rule = StopRule(mode=mode, threshold=threshold, min_delta=min_delta, patience=patience)
        self.every_n_train_steps, self.every_n_epochs = every_n_train_steps, every_n_epochs
        self.check_on_train_start = check_on_train_start
        self.num_samples, self.sigmas, self.timesteps = num_samples, sigmas, timesteps
        self.num_sampling_steps, self.seed = num_sampling_steps, seed
        self.monitor, self.stop_training, self.ground_truth = monitor, stop_training, ground_truth
        self.time_budget_s, self.log_media, self.num_media_samples = time_budget_s, log_media, num_media_samples
        self.save_plot, self.prefix = save_plot, prefix
        self.history: list[dict[str, float]] = []
        self.stopped_step: int | None = None
        self.failures = 0
        self._failure_reported = False
        self._media_failure_reported = False
        self._convergence_reported = False
        self._last_step: int | None = None
        self._warm_start: dict[int, Tensor] | None = None
        self._noise: Tensor | None = None
        self._train_data: Tensor | None = None
        self._measure_ts: list[int] = []

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.rule.mode)

    # ----------------------------------------------------------------------------------------------
    # Setup
    # ----------------------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        model = check_model(pl_module)
        datamodule = getattr(trainer, "datamodule", None)
        data_shape = getattr(datamodule, "data_shape", None)  # Lightning sets the datamodule up before callbacks
        if data_shape is not None and tuple(data_shape) != tuple(model.data_shape):
            raise ValueError(f"The datamodule serves samples of shape {tuple(data_shape)} but the model's data_shape "
                             f"is {tuple(model.data_shape)}; make them agree.")
        self._measure_ts = resolve_timesteps(model, self.sigmas, self.timesteps)
        dim, num_t = math.prod(model.data_shape), model.schedule.num_timesteps
        if self.config.k > dim:
            raise ValueError(f"k={self.config.k} is larger than the data dimension {dim}; choose a smaller k.")
        if self.num_sampling_steps > num_t:
            raise ValueError(f"num_sampling_steps={self.num_sampling_steps} exceeds the model's {num_t} timesteps.")
        probes = probe_noise(self.num_samples, model.data_shape, self.seed)
        self._noise = probes[trainer.global_rank :: trainer.world_size]
        if self._noise.shape[0] == 0:
            raise ValueError(f"num_samples={self.num_samples} is smaller than the number of processes "
                             f"({trainer.world_size}); every rank needs at least one probe.")
        if self.conditions is not None and getattr(model, "conditional", None) is False:
            raise ValueError(f"conditions={list(self.conditions)} needs a conditional model, but "
                             f"{type(model).__name__}.conditional is False; set conditions=None.")
        self._warm_start = None  # eigenvectors belong to one shard of probes: never carried across stages
        self._train_data = None
        if self.ground_truth and hasattr(datamodule, "unique_train_data"):
            train = datamodule.unique_train_data()
            if tuple(train.shape[1:]) != tuple(model.data_shape):
                raise ValueError(f"The datamodule's training data has sample shape {tuple(train.shape[1:])} but the "
                                 f"model's data_shape is {tuple(model.data_shape)}; make them agree.")
            if len(train) < 2:
                raise ValueError("ground_truth=True needs at least 2 distinct training images for the nearest-"
                                 "neighbour ratio; set ground_truth=False.")
            self._train_data = train.to(pl_module.device)
        known = self._metric_names()
        if self.monitor.removeprefix(self.prefix) not in known:
            raise ValueError(f"monitor={self.monitor!r} is not logged by this MemorizationMonitor; choose one of "
                             f"{sorted(self.prefix + name for name in known)}.")

    def _metric_names(self) -> set[str]:
        """Every key (without prefix) a successful check logs, given the measured timesteps and ground truth."""
        per_sample = {*SharpnessStats.SCALARS, "flagged_fraction", "converged_fraction"}
        names = per_sample | {f"t{t}/{n}" for t in self._measure_ts for n in per_sample} | {"seconds", "check_failures"}
        if self.conditions is not None:
            cond = {*CONDITIONAL_SCALARS, "sharpest_condition", "seconds"}
            cond |= {f"cond{i}/{n}" for i in range(len(self.conditions)) for n in CONDITIONAL_SCALARS}
            names |= {f"cond/{n}" for n in cond}
        return names | ({"nn_rate", "auroc"} if self._train_data is not None else set())

    # ----------------------------------------------------------------------------------------------
    # Schedule
    # ----------------------------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step == 0:
            if self.check_on_train_start:
                self._check(trainer, pl_module, can_stop=True)  # the baseline sets the stop rule's best value
        elif self.history:  # resumed: make the last values monitorable again until the next check
            last = {k: v for k, v in self.history[-1].items() if k not in ("step", "epoch")}
            set_callback_metrics(trainer, {f"{self.prefix}{name}": value for name, value in last.items()})

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        n = self.every_n_train_steps
        step = trainer.global_step
        if n is not None and step > 0 and step % n == 0 and step != self._last_step:
            self._check(trainer, pl_module, can_stop=True)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        n = self.every_n_epochs
        if n is not None and (trainer.current_epoch + 1) % n == 0 and trainer.global_step != self._last_step:
            self._check(trainer, pl_module, can_stop=True)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "validate" and not trainer.sanity_checking:
            self._check(trainer, pl_module, can_stop=False)

    # ----------------------------------------------------------------------------------------------
    # One check
    # ----------------------------------------------------------------------------------------------
    def _check(self, trainer: pl.Trainer, pl_module: pl.LightningModule, can_stop: bool) -> None:
        self._last_step = trainer.global_step
        report, cond_values, error = self._measure(pl_module)
        ok = trainer.strategy.reduce_boolean_decision(error is None, all=True)
        if not ok:
            self._report_failure(trainer, error or "it failed on another rank", local=error is not None)
            return
        values = self._reduce(report, pl_module.device) | cond_values
        values["check_failures"] = float(self.failures)
        step = trainer.global_step
        self._log_scalars(trainer, values, step)
        self._warn_unconverged(values["converged_fraction"], step)
        self.history.append({"step": float(step), "epoch": float(trainer.current_epoch), **values})
        if self.log_media and trainer.is_global_zero:
            self._log_media(trainer, report, step)
        self._warm_start = {t: s.eigenvectors for t, s in report.stats.items() if s.eigenvectors is not None} or None
        rank_zero_info(console_line(values, step))
        if can_stop:
            self._decide(trainer, values[self.monitor.removeprefix(self.prefix)], step)

    def _measure(self, pl_module: pl.LightningModule) -> tuple[SharpnessReport | None, dict[str, float], str | None]:
        """This rank's report, the conditional metrics (identical on every rank: same weights, same noises) and
        an error message when the check failed."""
        start = time.perf_counter()
        cond_values: dict[str, float] = {}
        try:
            report = analyze(pl_module, noise=self._noise, timesteps=self._measure_ts, sigmas=(),
                             config=self.config, num_sampling_steps=self.num_sampling_steps, seed=self.seed,
                             train_data=self._train_data, warm_start=self._warm_start)
            if self.conditions is not None:
                labels = torch.tensor(self.conditions, dtype=torch.long, device=pl_module.device)
                cond = conditional_report(pl_module, labels, num_samples_per_cond=self.num_cond_samples,
                                          num_generations=self.num_cond_generations, seed=self.seed)
                cond_values = {f"cond/{name}": value for name, value in cond.summary().items()}
        except Exception as err:  # a failed check is skipped and reported, never allowed to end training
            if isinstance(err, torch.cuda.OutOfMemoryError):
                torch.cuda.empty_cache()
            self._warm_start = None
            return None, cond_values, f"{type(err).__name__}: {err}"
        elapsed = time.perf_counter() - start
        if self.time_budget_s is not None and elapsed > self.time_budget_s:
            return None, cond_values, (f"the check took {elapsed:.1f} s, over time_budget_s={self.time_budget_s:g}; "
                                       "lower num_samples or k, use fewer sigmas, or raise the budget")
        return report, cond_values, None

    def _reduce(self, report: SharpnessReport, device: torch.device) -> dict[str, float]:
        per_sample = report.per_sample()
        labels = report.labels.memorized if report.labels is not None else None
        with torch.inference_mode(False):  # states must be normal tensors, also under trainer.validate()
            aggregator = CheckAggregator(sorted(per_sample), device)
            values = aggregator.reduce(per_sample, report.primary.score, labels)
        values["seconds"] = report.seconds
        return values

    def _decide(self, trainer: pl.Trainer, value: float, step: int) -> None:
        fired = self.rule.update(value)
        fired = trainer.strategy.reduce_boolean_decision(fired, all=False)
        if not fired:
            return
        self.stopped_step = step
        message = f"Memorization rose at step {step}: {self.monitor} {self.rule.reason}."
        if self.stop_training:
            trainer.should_stop = True
            rank_zero_info(f"{message} Stopping training.")
        else:
            rank_zero_warn(f"{message} (stop_training=False: training goes on.)")
        for logger in trainer.loggers:
            logger.log_metrics({f"{self.prefix}stopped": 1.0}, step=step)

    def _warn_unconverged(self, converged_fraction: float, step: int) -> None:
        """Warn once when the eigenvalue solver stopped short of ``tol`` on some probes (the check still counts)."""
        if converged_fraction >= 1.0 or self._convergence_reported:
            return
        self._convergence_reported = True
        rank_zero_warn(f"MemorizationMonitor: at step {step} the eigenvalue solver did not reach "
                       f"tol={self.config.tol:g} on {1 - converged_fraction:.0%} of the probes. The check is kept "
                       f"(its eigenvalues are the "
                       f"best Ritz estimates, which underestimate the flattest directions) and "
                       f"{self.prefix}converged_fraction tracks it; raise lanczos_iters or tol, or use solver='dense' "
                       "for small data. This warning is shown once.")

    def _report_failure(self, trainer: pl.Trainer, error: str, local: bool) -> None:
        self.failures += 1
        self._log_scalars(trainer, {"check_failures": float(self.failures)}, trainer.global_step)
        if not self._failure_reported and (local or trainer.is_global_zero):
            where = f" on rank {trainer.global_rank}" if trainer.world_size > 1 else ""
            warnings.warn(f"MemorizationMonitor: the check at step {trainer.global_step} failed{where} and was "
                          f"skipped ({error}). Training goes on; later failures are counted in "
                          f"{self.prefix}check_failures without further warnings.", stacklevel=2)
            self._failure_reported = True

    # ----------------------------------------------------------------------------------------------
    # Output
    # ----------------------------------------------------------------------------------------------
    def _log_scalars(self, trainer: pl.Trainer, values: dict[str, float], step: int) -> None:
        log_scalars(trainer, {f"{self.prefix}{name}": value for name, value in values.items()}, step)

    def _log_media(self, trainer: pl.Trainer, report: SharpnessReport, step: int) -> None:
        from lightning.pytorch.loggers import WandbLogger

        from memcallback.viz.wandb_media import log_media

        for logger in trainer.loggers:
            if not isinstance(logger, WandbLogger):
                continue
            try:
                log_media(logger.experiment, report, self._train_data, step=step, prefix=self.prefix,
                          num_images=self.num_media_samples)
            except Exception as err:  # media are a convenience: never let them end a training run
                if not self._media_failure_reported:
                    rank_zero_warn(f"MemorizationMonitor: W&B media could not be logged ({type(err).__name__}: "
                                   f"{err}); scalars are unaffected. Set log_media=False to skip them.")
                    self._media_failure_reported = True

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank must ask
        if not (self.save_plot and self.history and trainer.is_global_zero):
            return
        from memcallback.viz.plots import plot_history

        path = Path(log_dir or trainer.default_root_dir) / "memorization.png"
        plot_history(self.history, path, monitor=self.monitor, prefix=self.prefix,
                     threshold=self.rule.threshold, stopped_step=self.stopped_step)
        rank_zero_info(f"[memorization] curves over training written to {path}")

    # ----------------------------------------------------------------------------------------------
    # State
    # ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"rule": self.rule.state_dict(), "history": self.history, "stopped_step": self.stopped_step,
                "failures": self.failures, "last_step": self._last_step,
                "probes": {"seed": self.seed, "num_samples": self.num_samples, "timesteps": self._measure_ts}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        probes = state_dict.get("probes", {})
        if probes and (probes.get("seed"), probes.get("num_samples")) != (self.seed, self.num_samples):
            rank_zero_warn(f"MemorizationMonitor: the checkpoint was measured with seed={probes.get('seed')} and "
                           f"num_samples={probes.get('num_samples')}, this run uses seed={self.seed} and "
                           f"num_samples={self.num_samples}: the curves before and after the resume differ in probes.")
        if probes and self._measure_ts and list(probes.get("timesteps", [])) != list(self._measure_ts):
            rank_zero_warn(f"MemorizationMonitor: the checkpoint measured timesteps {probes.get('timesteps')}, this "
                           f"run measures {self._measure_ts}; the stop rule starts afresh.")
            self.rule.reset()
        else:
            self.rule.load_state_dict(state_dict.get("rule", {}))
        self.history = list(state_dict.get("history", []))
        self.stopped_step = state_dict.get("stopped_step")
        self.failures = int(state_dict.get("failures", 0))
        self._last_step = state_dict.get("last_step")
