"""Fine-tuning as diffusers' scripts do it, watched through AcceleratedWatch: EMA (``EMAModel``) measured, kept and
restored; ``save_state`` / ``load_state`` across a run killed mid-patience, with ``checkpoints_total_limit``
rotation; gradient accumulation; bf16 mixed precision and half-precision weights measured in float32.

The loop is the shape of ``train_unconditional.py``: ``accelerator.accumulate``, ``global_step`` counted under
``accelerator.sync_gradients``, ``ema_model.step`` after each optimizer step, a checkpoint every few steps with
rotation, resume from the latest ``checkpoint-*``, and the final save from the EMA weights
(``store`` / ``copy_to`` / ``restore``). Each step's batch comes from a generator seeded by the step, so a resumed run
sees the same data as an uninterrupted one.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("accelerate")
diffusers = pytest.importorskip("diffusers")

from accelerate import Accelerator  # noqa: E402
from accelerate.state import AcceleratorState  # noqa: E402
from diffusers.training_utils import EMAModel  # noqa: E402
from test_accelerate import PROBES, SHARPNESS, MemoryTracker, instance_images, tiny_unet  # noqa: E402

from memcallback import GovernorConfig, MemorizationWatch, StopConfig  # noqa: E402
from memcallback.adapters import AcceleratedWatch, DiffusersModel  # noqa: E402
from memcallback.adapters.checkpointing import SafeFolder  # noqa: E402
from memcallback.core import measure  # noqa: E402

#: quiet at 0 and 2 (safe: step 2), alarming from 4 on: with patience 3 the rule fires at step 8.
SERIES = {0: 0.0, 2: 0.1, 4: 0.5, 6: 0.6, 8: 0.7, 10: 0.8, 12: 0.9}
STOP = StopConfig(monitor="memorization/score", threshold=0.3, min_delta=0.05, patience=3, restore_safe_weights=True)


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    """Each run here is a new job (mixed_precision changes between them); leave no state to later tests."""
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def scripted_watch(series: dict[int, float] | None = SERIES, **kwargs) -> MemorizationWatch:
    """A watch checking every 2 optimizer steps whose measured score at step ``s`` is set to ``series[s]`` (the
    real measurement otherwise, ``series=None``: unchanged)."""
    watch = MemorizationWatch(**({"every_n_steps": 2, "probes": PROBES, "sharpness": SHARPNESS, "stop": STOP,
                                  "governor": GovernorConfig(max_overhead=None)} | kwargs))  # every check full
    if series is not None:
        def measure_fn(model, request):
            measured = measure(model, request)
            measured.report.primary.memorization_score.fill_(series[watch.last_step])
            return measured

        watch.measure_fn = measure_fn
    return watch


@dataclass
class Run:
    """What a run ends with: the final step, the raw and EMA weights, and what the script saves (the EMA copied
    into the UNet, or the UNet without EMA)."""

    steps: int
    raw: dict[str, torch.Tensor]
    ema: list[torch.Tensor] | None
    saved: dict[str, torch.Tensor]
    helper: AcceleratedWatch | None = None
    calls_per_step: dict[int, int] = field(default_factory=dict)


def train(max_steps: int, watch: MemorizationWatch | None = None, *, use_ema: bool = True, accumulation: int = 1,
          mixed_precision: str = "no", output_dir: Path | None = None, checkpointing_steps: int | None = None,
          total_limit: int | None = None, resume: bool = False, die_after: int | None = None,
          every_micro_batch: bool = False) -> Run:
    """A ``train_unconditional.py``-shaped loop on a tiny UNet (see the module docstring)."""
    AcceleratorState._reset_state(reset_partial_state=True)  # a new job: mixed_precision may change between runs
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=accumulation, mixed_precision=mixed_precision)
    scheduler, images = diffusers.DDPMScheduler(num_train_timesteps=100), instance_images()
    unet = tiny_unet()
    ema = EMAModel(unet.parameters(), model_cls=diffusers.UNet2DModel, model_config=unet.config) if use_ema else None
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    unet, optimizer = accelerator.prepare(unet, optimizer)
    helper = None
    if watch is not None:
        helper = AcceleratedWatch(watch, accelerator, safe_dir=None if output_dir is None else output_dir / "safe")
        helper.setup(unet, scheduler, train_data=images, ema=ema)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    global_step = 0
    if resume:
        latest = max((d for d in output_dir.iterdir() if d.name.startswith("checkpoint")),
                     key=lambda d: int(d.name.split("-")[1]))  # the script's `--resume_from_checkpoint latest`
        accelerator.load_state(latest)
        global_step = int(latest.name.split("-")[1])
    stopped = helper is not None and helper.after_step(global_step)
    micro = 0
    while not stopped and global_step < max_steps:
        generator = torch.Generator().manual_seed(100 * global_step + micro % accumulation)
        clean = images[torch.randint(len(images), (2,), generator=generator)]
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(0, 100, (2,), generator=generator)
        with accelerator.accumulate(unet):
            loss = F.mse_loss(unet(scheduler.add_noise(clean, noise, timesteps), timesteps).sample, noise)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
        micro += 1
        if every_micro_batch and helper is not None:  # called outside `if sync_gradients:` too: never mid-step
            stopped = helper.after_step(global_step)
        if accelerator.sync_gradients:
            if ema is not None:
                ema.step(unet.parameters())
            global_step += 1
            if helper is not None:
                stopped = helper.after_step(global_step)  # before save_state: the checkpoint holds the check
            if checkpointing_steps and global_step % checkpointing_steps == 0:
                checkpoints = sorted((d for d in output_dir.iterdir() if d.name.startswith("checkpoint")),
                                     key=lambda d: int(d.name.split("-")[1]))
                if total_limit is not None and len(checkpoints) >= total_limit:  # the script's rotation
                    for old in checkpoints[:len(checkpoints) - total_limit + 1]:
                        shutil.rmtree(old)
                accelerator.save_state(output_dir / f"checkpoint-{global_step}")
            if global_step == die_after:
                break
    model = accelerator.unwrap_model(unet)
    raw = {k: v.clone() for k, v in model.state_dict().items()}
    if ema is not None:  # the script's final save: store, copy_to, save_pretrained, restore
        ema.store(model.parameters())
        ema.copy_to(model.parameters())
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    if ema is not None:
        ema.restore(model.parameters())
    return Run(global_step, raw, None if ema is None else [p.clone() for p in ema.shadow_params], saved, helper)


def differing(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    return [k for k, v in a.items() if not torch.equal(v, b[k])]


def without_seconds(history: list[dict[str, float]]) -> list[dict[str, float | None]]:
    """The rows without their timing, NaN as None (so that equal rows compare equal)."""
    return [{k: None if math.isnan(v) else v for k, v in row.items() if k not in ("seconds", "overhead")}
            for row in history]


# --------------------------------------------------------------------------------------------------
# EMA
# --------------------------------------------------------------------------------------------------
def test_with_ema_the_saved_model_after_a_stop_is_the_safe_ema_and_training_is_untouched() -> None:
    watch = scripted_watch()
    run = train(12, watch)
    assert (run.steps, watch.stopped_step, watch.safe_step) == (8, 8, 2)
    safe = train(2)  # an unwatched run of 2 steps: the weights of the safe check
    assert differing(run.raw, safe.raw) == []  # the raw weights are those of step 2, bit for bit
    assert all(torch.equal(a, b) for a, b in zip(run.ema, safe.ema, strict=True))  # and so is the EMA
    assert differing(run.saved, safe.saved) == []  # what the script saves (the EMA) is the safe EMA
    assert differing(run.saved, run.raw) != []  # ... which is not the raw weights
    unwatched = train(8)  # the watch never moved training: 8 watched steps are 8 unwatched ones (before the stop)
    raw_only = scripted_watch(weights="raw", stop=dataclasses.replace(STOP, patience=99, restore_safe_weights=False))
    assert differing(train(8, raw_only).raw, unwatched.raw) == []


def test_the_ema_weights_are_measured_when_chosen_and_put_back() -> None:
    AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(cpu=True)
    unet, scheduler = tiny_unet(), diffusers.DDPMScheduler(num_train_timesteps=100)
    ema = EMAModel(unet.parameters())
    with torch.no_grad():  # an average that differs from the raw weights
        for shadow in ema.shadow_params:
            shadow.mul_(0.9)
    before = copy.deepcopy(unet.state_dict())
    scores = {}
    for weights in ("ema", "raw"):
        helper = AcceleratedWatch(scripted_watch(None, weights=weights), accelerator)
        helper.setup(unet, scheduler, ema=ema)
        scores[weights] = helper.check(0).scalars
        assert differing(unet.state_dict(), before) == []  # the raw weights are back, bit for bit
    reference = copy.deepcopy(unet)
    ema.copy_to(reference.parameters())
    for weights, model in (("ema", reference), ("raw", unet)):
        plain = scripted_watch(None)
        plain.setup(DiffusersModel(model, scheduler))
        expected = plain.check(DiffusersModel(model, scheduler), 0).scalars
        assert without_seconds([scores[weights]]) == without_seconds([expected])
    assert scores["ema"]["mu_max"] != scores["raw"]["mu_max"]  # two different models were measured


# --------------------------------------------------------------------------------------------------
# Resume
# --------------------------------------------------------------------------------------------------
def test_a_run_killed_mid_patience_resumes_with_load_state_to_the_same_stop(tmp_path) -> None:
    straight = train(12, scripted_watch(), output_dir=tmp_path / "straight", checkpointing_steps=2, total_limit=2)
    killed_dir = tmp_path / "killed"
    killed = train(12, scripted_watch(), output_dir=killed_dir, checkpointing_steps=2, total_limit=2, die_after=6)
    assert killed.helper.watch.rule.wait_count == 2 and killed.helper.watch.stopped_step is None  # mid-patience
    resumed_watch = scripted_watch()
    resumed = train(12, resumed_watch, output_dir=killed_dir, checkpointing_steps=2, total_limit=2, resume=True)
    # the same later check (8), the same stop, the same history (the real statistics too: the same weights)
    assert (resumed.steps, resumed_watch.stopped_step, resumed_watch.safe_step) == (8, 8, 2)
    assert [row["step"] for row in resumed_watch.history] == [0, 2, 4, 6, 8]  # no second baseline at step 6
    assert without_seconds(resumed_watch.history) == without_seconds(straight.helper.watch.history)
    assert resumed_watch.num_checks == straight.helper.watch.num_checks
    # rotation kept two checkpoints and never touched the safe folder; its weights came back after the resume
    assert sorted(d.name for d in killed_dir.iterdir()) == ["checkpoint-6", "checkpoint-8", "safe"]
    assert SafeFolder(killed_dir / "safe").step() == 2
    assert differing(resumed.raw, straight.raw) == [] and differing(resumed.saved, straight.saved) == []
    assert differing(resumed.saved, train(2).saved) == []  # the safe EMA, restored across the kill
    # resumed from the checkpoint written at the stop, the rule can fire again
    again = scripted_watch()
    train(12, again, output_dir=killed_dir, resume=True)
    assert again.stopped_step == 10


# --------------------------------------------------------------------------------------------------
# Accumulation and precision
# --------------------------------------------------------------------------------------------------
def test_with_gradient_accumulation_checks_count_optimizer_steps_once_each() -> None:
    quiet = StopConfig(monitor="memorization/score", threshold=10.0, patience=1)
    watch = scripted_watch({s: 0.0 for s in range(0, 7, 2)}, stop=quiet)
    run = train(6, watch, accumulation=2, every_micro_batch=True)
    assert [row["step"] for row in watch.history] == [0, 2, 4, 6] and watch.num_checks == 4
    assert differing(run.raw, train(6, accumulation=2).raw) == []  # bit-identical to the unwatched run


def test_bf16_mixed_precision_and_half_weights_are_measured_in_float32() -> None:
    quiet = StopConfig(monitor="memorization/score", threshold=10.0, patience=1)
    watch = scripted_watch(None, stop=quiet)
    run = train(2, watch, mixed_precision="bf16", use_ema=False)
    assert differing(run.raw, train(2, mixed_precision="bf16", use_ema=False).raw) == []
    unet, scheduler = tiny_unet(), diffusers.DDPMScheduler(num_train_timesteps=100)
    unet.load_state_dict(run.raw)
    fp32 = scripted_watch(None, stop=quiet)
    fp32.setup(DiffusersModel(unet, scheduler), train_data=instance_images())
    expected = fp32.check(DiffusersModel(unet, scheduler), 2).scalars
    assert without_seconds(watch.history[-1:]) == without_seconds([{"step": 2.0, **expected}])
    # a UNet kept in bf16 (as LoRA scripts keep the frozen base) is measured upcast, and left in bf16, unchanged
    half = copy.deepcopy(unet).to(torch.bfloat16)
    before = copy.deepcopy(half.state_dict())
    upcast = DiffusersModel(copy.deepcopy(half).float(), scheduler)
    measured = scripted_watch(None)
    measured.setup(DiffusersModel(half, scheduler))
    scalars = measured.check(DiffusersModel(half, scheduler), 0).scalars
    reference = scripted_watch(None)
    reference.setup(upcast)
    assert without_seconds([scalars]) == without_seconds([reference.check(upcast, 0).scalars])
    assert all(v.dtype == torch.bfloat16 for v in half.state_dict().values()) and differing(half.state_dict(),
                                                                                          before) == []


def test_a_baseline_before_init_trackers_is_warned_about() -> None:
    AcceleratorState._reset_state(reset_partial_state=True)
    tracker = MemoryTracker()
    accelerator = Accelerator(cpu=True, log_with=tracker)
    helper = AcceleratedWatch(scripted_watch(None), accelerator)
    helper.setup(tiny_unet(), diffusers.DDPMScheduler(num_train_timesteps=100))
    with pytest.warns(UserWarning, match="before accelerator.init_trackers"):
        helper.after_step(0)
    accelerator.init_trackers("test")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        helper.after_step(2)
    assert [step for step, _ in tracker.logs] == [2]  # the baseline reached no tracker


def test_a_safe_folder_among_the_checkpoints_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="starts with 'checkpoint'"):
        AcceleratedWatch(scripted_watch(None), Accelerator(cpu=True), safe_dir=tmp_path / "checkpoint-safe")


class WandbStandIn(MemoryTracker):
    """An accelerate tracker named ``wandb`` whose run records ``log(data, step=, commit=)`` calls."""

    name = "wandb"

    def __init__(self) -> None:
        super().__init__()
        self.run_calls: list[tuple[dict, int | None, bool]] = []
        stand_in = self

        class Run:
            def log(self, data, step=None, commit=True):
                stand_in.run_calls.append((data, step, commit))

        self.run = Run()

    @property
    def tracker(self):
        return self.run


def test_with_a_wandb_tracker_a_check_logs_charts_into_its_step_and_no_image_by_default() -> None:
    AcceleratorState._reset_state(reset_partial_state=True)
    tracker = WandbStandIn()
    accelerator = Accelerator(cpu=True, log_with=tracker)
    accelerator.init_trackers("test")
    helper = AcceleratedWatch(scripted_watch(None), accelerator)
    helper.setup(tiny_unet(), diffusers.DDPMScheduler(num_train_timesteps=100), train_data=instance_images())
    helper.after_step(0)
    ((data, step, commit),) = tracker.run_calls
    assert (step, commit) == (0, False)  # into the scalars' step, which the script may still add to
    assert {"memorization/mu_histogram", "memorization/spectrum", "memorization/samples"} <= set(data)
    assert "memorization/most_memorized" not in data  # media="charts": no image of a sample or training image
    with pytest.raises(ValueError, match="media"):
        AcceleratedWatch(scripted_watch(None), accelerator, media="all")
