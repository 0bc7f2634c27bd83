"""Watch a model trained in an `accelerate <https://github.com/huggingface/accelerate>`_ loop (diffusers' DreamBooth,
LoRA and text-to-image fine-tuning scripts are such loops).

:class:`AcceleratedWatch` wires a :class:`~memcallback.core.MemorizationWatch` to an ``accelerate.Accelerator``:
rank and world size from the accelerator, the reduction over processes through ``accelerator.reduce``
(:class:`AcceleratorReducer`), the measurement on ``accelerator.unwrap_model(model)``, every check's scalars
through ``accelerator.log`` (so to every tracker of ``log_with``: W&B, TensorBoard, ...), and the stop decision
returned to the loop::

    unet, optimizer, loader = accelerator.prepare(unet, optimizer, loader)
    watch = AcceleratedWatch(MemorizationWatch(every_n_steps=100), accelerator)
    watch.setup(unet, noise_scheduler, train_data=instance_images)
    watch.check(0)  # the baseline, before fine-tuning
    for step, batch in enumerate(loader, start=1):
        ...  # the training step
        if watch.after_step(step):
            break

The module does not import accelerate: it calls the accelerator it is given. Install both with
``pip install memcallback[accelerate]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from memcallback.adapters.diffusers import DiffusersModel
from memcallback.core import CheckResult, CountingReducer, MemorizationWatch
from memcallback.diffusion import DiffusionModel, check_model
from memcallback.measure import names

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

    ``state_dict`` / ``load_state_dict`` are the watch's: ``accelerator.register_for_checkpointing(watch)`` makes
    ``accelerator.save_state`` / ``load_state`` keep the stop rule and history across a resume.

    Args:
        watch: the monitoring core, with its schedule, probes, solver and stop settings.
        accelerator: the training job's accelerator.
    """

    def __init__(self, watch: MemorizationWatch, accelerator: Accelerator) -> None:
        if not isinstance(watch, MemorizationWatch):
            raise TypeError(f"AcceleratedWatch wraps a memcallback.MemorizationWatch, got {type(watch).__name__}.")
        if watch.every_n_steps is None:
            raise ValueError("AcceleratedWatch checks on a step schedule (after_step): build the MemorizationWatch "
                             "with every_n_steps=N instead of every_n_epochs.")
        self.watch, self.accelerator = watch, accelerator
        self.model: DiffusionModel | None = None

    def setup(self, model: nn.Module, noise_scheduler: Any | None = None, *,
              train_data: Tensor | None = None, heldout_data: Tensor | None = None) -> None:
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
        """
        unwrapped = self.accelerator.unwrap_model(model, keep_torch_compile=False)
        if noise_scheduler is not None:
            measured = DiffusersModel(unwrapped, noise_scheduler)
        else:
            try:
                measured = check_model(unwrapped)
            except TypeError as err:
                raise TypeError(f"{err} For a diffusers UNet pass its scheduler: "
                                "watch.setup(unet, noise_scheduler, ...).") from None
        device = self.accelerator.device
        self.watch.setup(measured, train_data=None if train_data is None else train_data.to(device),
                         heldout_data=None if heldout_data is None else heldout_data.to(device),
                         rank=self.accelerator.process_index, world_size=self.accelerator.num_processes,
                         reducer=AcceleratorReducer(self.accelerator))
        self.model = measured

    def after_step(self, step: int) -> bool:
        """Check when one is due after optimizer step ``step``; whether the loop should stop training now.

        With gradient accumulation call it once per optimizer step: where diffusers' scripts count
        ``global_step`` (under ``if accelerator.sync_gradients:``).
        """
        return self.watch.due(step) and self.check(step).stop

    def check(self, step: int) -> CheckResult:
        """Check now (collective), log the scalars at ``step``, report the decision."""
        if self.model is None:
            raise RuntimeError("Call AcceleratedWatch.setup(model, ...) before the first check.")
        result = self.watch.check(self.model, step)
        self.accelerator.log(result.metrics(), step=step)
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

    def state_dict(self) -> dict[str, Any]:
        """The watch's state (see :meth:`MemorizationWatch.state_dict`)."""
        return self.watch.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.watch.load_state_dict(state)
