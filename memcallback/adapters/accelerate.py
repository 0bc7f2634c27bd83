"""Watch a model trained in an `accelerate <https://github.com/huggingface/accelerate>`_ loop (diffusers' DreamBooth,
LoRA and text-to-image fine-tuning scripts are such loops).

:class:`AcceleratedWatch` wires a :class:`~memcallback.core.MemorizationWatch` to an ``accelerate.Accelerator``:
rank and world size from the accelerator, the reduction over processes through ``accelerator.reduce``
(:class:`AcceleratorReducer`), the measurement on ``accelerator.unwrap_model(model)``, every check's scalars
through ``accelerator.log`` (so to every tracker of ``log_with``: W&B, TensorBoard, ...), and the stop decision
returned to the loop::

    unet, optimizer, loader = accelerator.prepare(unet, optimizer, loader)
    watch = AcceleratedWatch(MemorizationWatch(every_n_steps=100), accelerator, safe_dir=output_dir / "safe")
    watch.setup(unet, noise_scheduler, train_data=instance_images, ema=ema_model)  # ema: optional
    accelerator.init_trackers(...)  # before the baseline, so that it reaches the trackers
    accelerator.load_state(...)     # when resuming
    stopped = watch.after_step(global_step)  # the baseline (not repeated after a resume)
    for batch in loader:
        ...  # the training step, under accelerator.accumulate(unet)
        if accelerator.sync_gradients:
            global_step += 1
            stopped = watch.after_step(global_step)  # before save_state, so that the checkpoint holds the check
            ...  # accelerator.save_state every checkpointing_steps
            if stopped:
                break

**EMA.** Given the script's ``EMAModel`` (or any :class:`~memcallback.core.weights.AveragedWeights`), the watch
measures the average (``MemorizationWatch(weights="ema")``, the default), keeps the safe weights of both copies and,
on a stop, restores both: what the script then saves (``ema_model.copy_to(unet.parameters())``) is the safe model.

**Resume.** :meth:`AcceleratedWatch.setup` registers the watch with ``accelerator.register_for_checkpointing``:
``accelerator.save_state`` / ``load_state`` carry its history, stop-rule counters, safe step, warm start and check
count. The safe weights go to ``safe_dir`` (:class:`~memcallback.adapters.checkpointing.SafeFolder`) at every safe
check, beside the ``checkpoint-*`` folders, where rotation never deletes them; after ``load_state`` they are read
back, so a stop after a resume still restores them.

**Precision and accumulation.** A check measures in float32 whatever ``mixed_precision`` says (accelerate's autocast
wrapper of the model's ``forward`` is set aside for its length, half-precision weights are upcast and cast back),
and only at optimizer steps: :meth:`AcceleratedWatch.after_step` does nothing while
``accelerator.sync_gradients`` is False.

The module does not import accelerate: it calls the accelerator it is given. Install both with
``pip install memcallback[accelerate]``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from memcallback.adapters.checkpointing import SafeFolder
from memcallback.adapters.diffusers import DiffusersModel
from memcallback.arguments import is_int, require
from memcallback.core import CheckResult, CountingReducer, MemorizationWatch
from memcallback.core.safe import SafeWeights
from memcallback.core.weights import AveragedWeights
from memcallback.diffusion import DiffusionModel, check_model
from memcallback.measure import names
from memcallback.viz.wandb_media import MEDIA

if TYPE_CHECKING:
    from accelerate import Accelerator


class AcceleratorReducer(CountingReducer):
    """The :class:`~memcallback.core.Reducer` of an ``accelerate.Accelerator``: sums through
    ``accelerator.reduce`` (``torch.distributed`` under multi-GPU, multi-CPU, FSDP and DeepSpeed; XLA on TPUs);
    booleans travel as one int64 on ``accelerator.device``.

    Args:
        accelerator: the training job's accelerator.
    """

    def __init__(self, accelerator: Accelerator) -> None:
        self.accelerator = accelerator
        self.device = accelerator.device

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        return self.accelerator.reduce(tensor, reduction="sum")

    @property
    def num_processes(self) -> int:
        return self.accelerator.num_processes


class AcceleratedWatch:
    """A :class:`~memcallback.core.MemorizationWatch` in an accelerate training loop.

    Every method that may check (:meth:`after_step`, :meth:`check`) is collective: every process calls it at the
    same step. At a check, the scalars go to ``accelerator.log(result.metrics(), step=step)`` (the trackers log on
    the main process only) and the summary line to ``accelerator.print``. When the stop rule fires, ``stopped = 1``
    and ``safe_step`` (the last check at which the model was not memorizing) are logged too, and with
    ``StopConfig(restore_safe_weights=True)`` the core has already loaded the weights of that check back into the
    unwrapped model (every process does, so they stay in sync).

    ``state_dict`` / ``load_state_dict`` are the watch's; :meth:`setup` registers them for checkpointing. The
    wrapped watch keeps its safe weights as the tensors training changes (``SafeWeights(trained_only=True)``: for
    LoRA the adapters, not a host copy of the frozen base) and calls ``on_safe`` after writing ``safe_dir``.

    Args:
        watch: the monitoring core, with its schedule, probes, solver and stop settings.
        accelerator: the training job's accelerator.
        safe_dir: where the weights of every safe check are written (main process), e.g.
            ``Path(args.output_dir) / "safe"`` (see :class:`~memcallback.adapters.checkpointing.SafeFolder`);
            ``None``: not written (a stop after a resume then has no safe weights to restore).
        media: with a ``wandb`` tracker, what a check logs besides scalars, as the Lightning callback does:
            ``"none"``, ``"charts"`` (histogram, spectrum, per-sample table; no image) or ``"images"`` (also the
            generated samples beside their nearest training images: public data only). See
            :data:`~memcallback.viz.wandb_media.MEDIA`.
        num_media_samples: most memorized samples shown with ``media="images"``.
    """

    def __init__(self, watch: MemorizationWatch, accelerator: Accelerator, safe_dir: str | Path | None = None,
                 media: str = "charts", num_media_samples: int = 16) -> None:
        if not isinstance(watch, MemorizationWatch):
            raise TypeError(f"AcceleratedWatch wraps a memcallback.MemorizationWatch, got {type(watch).__name__}.")
        if watch.every_n_steps is None:
            raise ValueError("AcceleratedWatch checks on a step schedule (after_step): build the MemorizationWatch "
                             "with every_n_steps=N instead of every_n_epochs.")
        require(isinstance(media, str) and media in MEDIA, "media", media, f"one of {MEDIA}")
        require(is_int(num_media_samples) and num_media_samples >= 1, "num_media_samples", num_media_samples,
                "an int >= 1")
        self.watch, self.accelerator = watch, accelerator
        self.media, self.num_media_samples = media, num_media_samples
        watch.safe_weights = SafeWeights(trained_only=True)  # LoRA: the adapters, not a host copy of the frozen base
        self.safe_folder = None if safe_dir is None else SafeFolder(safe_dir)
        self.model: DiffusionModel | None = None
        self.unwrapped: nn.Module | None = None
        self.ema: Any = None
        self.averaged: AveragedWeights | None = None
        self._warned: set[str] = set()
        user_on_safe = watch.on_safe
        watch.on_safe = lambda step: self._on_safe(step, user_on_safe)

    def setup(self, model: nn.Module, noise_scheduler: Any | None = None, *, train_data: Tensor | None = None,
              heldout_data: Tensor | None = None, ema: Any = None, null_cond: Tensor | None = None,
              prompt_embeds: Tensor | None = None) -> None:
        """Resolve the model to measure and the processes; raise a clear error on bad settings.

        Args:
            model: the model as ``accelerator.prepare`` returned it (or any module holding the trained weights).
                Its unwrapped form is measured: a :class:`~memcallback.DiffusionModel` as is, a diffusers UNet
                as ``DiffusersModel(unet, noise_scheduler)``.
            noise_scheduler: the diffusers scheduler the UNet trains with (``None`` when the model is itself a
                :class:`~memcallback.DiffusionModel`).
            train_data: ``[N, *data_shape]`` distinct training samples (e.g. the instance images) for the
                nearest-neighbour ground truth (``nn_rate``, ``auroc``), on any device, or ``None``.
            heldout_data: ``[M, *data_shape]`` samples never trained on; with ``train_data``, the sharpness gap
                and the loss gap (see :meth:`MemorizationWatch.setup`), or ``None``.
            ema: the averaged copy of the model's weights: diffusers' ``EMAModel`` of its parameters (``--use_ema``)
                or an :class:`~memcallback.core.weights.AveragedWeights`; ``None``: none.
            null_cond: for a ``UNet2DConditionModel``, the empty prompt's embedding ``[seq, dim]`` (the condition of
                the probes' samples); see :class:`~memcallback.adapters.DiffusersModel`.
            prompt_embeds: ``[P, seq, dim]`` embeddings of the prompts the conditional metrics measure
                (``ConditionalConfig(labels=...)`` indexes them).
        """
        unwrapped = self.accelerator.unwrap_model(model, keep_torch_compile=False)
        if noise_scheduler is not None:
            measured = DiffusersModel(unwrapped, noise_scheduler, null_cond=null_cond, prompt_embeds=prompt_embeds)
        else:
            try:
                measured = check_model(unwrapped)
            except TypeError as err:
                raise TypeError(f"{err} For a diffusers UNet pass its scheduler: "
                                "watch.setup(unet, noise_scheduler, ...).") from None
        averaged = ema if ema is None or isinstance(ema, AveragedWeights) else AveragedWeights.from_ema_model(
            ema, unwrapped)
        if averaged is not None:
            averaged.tensors()  # fail here when it does not pair with the model
        device = self.accelerator.device
        self.watch.setup(measured, train_data=None if train_data is None else train_data.to(device),
                         heldout_data=None if heldout_data is None else heldout_data.to(device),
                         rank=self.accelerator.process_index, world_size=self.accelerator.num_processes,
                         reducer=AcceleratorReducer(self.accelerator), averaged=averaged)
        if self.model is None:  # once: accelerate restores registered objects by their order
            self.accelerator.register_for_checkpointing(self)
        self.model, self.unwrapped, self.ema, self.averaged = measured, unwrapped, ema, averaged

    def after_step(self, step: int) -> bool:
        """Check when one is due after optimizer step ``step``; whether the loop should stop training now.

        ``step`` counts optimizer steps (diffusers' scripts' ``global_step``, not the loop's batch index); between
        the micro-batches of gradient accumulation (``accelerator.sync_gradients`` False) nothing is checked.
        """
        return self.accelerator.sync_gradients and self.watch.due(step) and self.check(step).stop

    def check(self, step: int) -> CheckResult:
        """Check now (collective), log the scalars at ``step``, report the decision."""
        if self.model is None:
            raise RuntimeError("Call AcceleratedWatch.setup(model, ...) before the first check.")
        if self.accelerator.is_main_process and self.accelerator.log_with and not self.accelerator.trackers:
            self._warn_once("trackers", f"memcallback: the check at step {step} ran before "
                            "accelerator.init_trackers, so its values reach no tracker; call init_trackers before "
                            "the baseline check.")
        with _without_autocast(self.unwrapped):
            result = self.watch.check(self.model, step)
        self.accelerator.log(result.metrics(), step=step)
        if self.media != "none" and result.report is not None and result.report.stats:
            self._log_media(result)
        self.accelerator.print(result.message)
        if result.fired:
            prefix = self.watch.prefix
            safe = {} if self.watch.safe_step is None else {prefix + names.SAFE_STEP: float(self.watch.safe_step)}
            self.accelerator.log({prefix + names.STOPPED: 1.0, **safe}, step=step)
            action = "Stopping training." if result.stop else "(stop_training=False: training goes on.)"
            self.accelerator.print(f"{result.reason} {action}")
            if result.restored:
                self.accelerator.print(f"[memorization] weights of the last safe check (step "
                                       f"{self.watch.safe_step}) restored.")
        return result

    def _log_media(self, result: CheckResult) -> None:
        """The check's W&B media, on the main process, into the step of its scalars (a failure only warns)."""
        runs = [t.tracker for t in self.accelerator.trackers if t.name == "wandb"]  # main process only
        if not runs:
            return
        from memcallback.viz.wandb_media import log_media

        try:
            log_media(_AtStep(runs[0], result.step), result.report, self.watch.train_data, step=result.step,
                      prefix=self.watch.prefix, num_images=self.num_media_samples, images=self.media == "images")
        except Exception as err:  # media are a convenience: never let them end a training run
            self._warn_once("media", f"memcallback: W&B media could not be logged ({type(err).__name__}: {err}); "
                            "scalars are unaffected. Set media='none' to skip them.")

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=3)

    def _on_safe(self, step: int, user_on_safe: Any) -> None:
        """At every safe check: the safe folder (main process), then the user's own ``on_safe``."""
        if self.safe_folder is not None and self.accelerator.is_main_process:
            self.safe_folder.write(self.unwrapped, step, self.ema, self.averaged)
        if user_on_safe is not None:
            user_on_safe(step)

    def state_dict(self) -> dict[str, Any]:
        """The watch's state (see :meth:`MemorizationWatch.state_dict`)."""
        return self.watch.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`, and with ``restore_safe_weights`` the safe weights from ``safe_dir`` when
        they are those of the restored safe step."""
        self.watch.load_state_dict(state)
        folder, safe_step = self.safe_folder, self.watch.safe_step
        if (folder is None or not self.watch.stop.restore_safe_weights or self.unwrapped is None
                or safe_step is None or folder.step() != safe_step):
            return
        state, averaged = folder.read(self.unwrapped, self.averaged)
        # the safe weights are the measured model's state: the unwrapped model's under its name there
        where = next(name for name, module in self.model.named_modules() if module is self.unwrapped)
        self.watch.safe_weights.load({f"{where}.{k}" if where else k: v for k, v in state.items()}, safe_step,
                                     averaged)


class _AtStep:
    """A wandb run whose ``log`` adds to the given step without committing it, as accelerate's own ``log(...,
    step=)`` does, so that the script's later values of that step still land."""

    def __init__(self, run: Any, step: int) -> None:
        self.run, self.step = run, step

    def log(self, data: dict[str, Any]) -> None:
        self.run.log(data, step=self.step, commit=False)


@contextmanager
def _without_autocast(model: nn.Module | None) -> Iterator[None]:
    """Inside, ``model.forward`` is the one accelerate wrapped in autocast for mixed precision (``_original_forward``,
    which ``prepare`` keeps), so that a check computes in float32; after, the wrapped one again."""
    original = None if model is None else model.__dict__.get("_original_forward")
    if original is None:
        yield
        return
    wrapped = model.__dict__["forward"]
    model.forward = original
    try:
        yield
    finally:
        model.forward = wrapped
