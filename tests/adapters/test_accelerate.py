"""The accelerate helper on a tiny random diffusers UNet2DModel: a DreamBooth-style fine-tuning loop watched, logged
through an accelerate tracker, stopped, and its safe weights restored; bad input; resume through
``accelerator.save_state``; and (slow) two processes on gloo that reduce and stop together."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("accelerate")
diffusers = pytest.importorskip("diffusers")

from accelerate import Accelerator  # noqa: E402
from accelerate.tracking import GeneralTracker  # noqa: E402

from memcallback import MemorizationWatch, ProbeConfig, SharpnessConfig, StopConfig  # noqa: E402
from memcallback.adapters import AcceleratedWatch  # noqa: E402
from memcallback.core import MeasureRequest, measure  # noqa: E402
from memcallback.measure import names  # noqa: E402

PROBES = ProbeConfig(num_samples=4, num_sampling_steps=5)
SHARPNESS = SharpnessConfig(k=4)
#: quiet at checks 0 and 2 (safe), alarming at 4 and 6: with patience 2 the rule fires at step 6, safe step 2.
SERIES = [0.0, 0.1, 0.5, 0.6]
STOP = StopConfig(monitor="memorization/score", threshold=0.3, min_delta=0.05, patience=2, restore_safe_weights=True)


class MemoryTracker(GeneralTracker):
    """An accelerate tracker that keeps every ``log`` call in memory: ``(step, values)``."""

    name = "memory"
    requires_logging_directory = False

    def __init__(self) -> None:
        super().__init__()
        self.logs: list[tuple[int | None, dict[str, float]]] = []

    @property
    def tracker(self) -> list[tuple[int | None, dict[str, float]]]:
        return self.logs

    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        self.logs.append((step, dict(values)))


def scripted(series: list[float]):
    """The real measurement, with every probe's memorization score of check ``i`` set to ``series[i]``."""
    calls = iter(series)

    def measure_fn(model, request: MeasureRequest):
        measured = measure(model, request)
        measured.report.primary.memorization_score.fill_(next(calls))
        return measured

    return measure_fn


def tiny_unet() -> nn.Module:
    """A randomly initialised 8x8 UNet2DModel with self-attention in its low-resolution blocks."""
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4, attention_head_dim=8,
    )


def instance_images() -> torch.Tensor:
    """Four 8x8 digits in [-1, 1]: the "instance images" of the fine-tuning."""
    from sklearn.datasets import load_digits

    return torch.as_tensor(load_digits().images[:4], dtype=torch.float32).unsqueeze(1) / 8 - 1


def finetune(max_steps: int, watch: MemorizationWatch | None = None, tracker: GeneralTracker | None = None):
    """A diffusers-style loop (prepare, DDPM noise, MSE on the noise); returns the unwrapped UNet and the steps."""
    accelerator = Accelerator(cpu=True, log_with=tracker)
    accelerator.init_trackers("test")
    unet, scheduler, images = tiny_unet(), diffusers.DDPMScheduler(num_train_timesteps=100), instance_images()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    unet, optimizer = accelerator.prepare(unet, optimizer)
    helper = None
    if watch is not None:
        helper = AcceleratedWatch(watch, accelerator)
        helper.setup(unet, scheduler, train_data=images)
    step = 0
    while not (helper is not None and helper.after_step(step)) and step < max_steps:
        clean = images[torch.randint(len(images), (2,), generator=generator)]
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(0, 100, (2,), generator=generator)
        loss = F.mse_loss(unet(scheduler.add_noise(clean, noise, timesteps), timesteps).sample, noise)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        step += 1
    accelerator.end_training()
    return accelerator.unwrap_model(unet), step


def test_a_watched_finetuning_loop_logs_stops_and_restores_the_safe_weights() -> None:
    tracker = MemoryTracker()
    watch = MemorizationWatch(every_n_steps=2, probes=PROBES, sharpness=SHARPNESS, stop=STOP,
                              measure_fn=scripted(SERIES))
    unet, steps = finetune(12, watch, tracker)
    assert steps == 6 and (watch.stopped_step, watch.safe_step) == (6, 2)
    # every check's scalars reach the tracker at its step, under the logged names; the stop adds two values
    checks = [(step, values) for step, values in tracker.logs if names.PREFIX + names.SCORE in values]
    assert [step for step, _ in checks] == [0, 2, 4, 6]
    keys = {names.PREFIX + key for key in names.check_keys(watch.setup_state.timesteps, True, None)}
    overhead = names.PREFIX + names.OVERHEAD  # from the second check on: training to compare with
    assert all(set(values) == keys | ({overhead} if step > 0 else set()) for step, values in checks)
    for (_, values), row in zip(checks, watch.history, strict=True):
        recorded = [row[k.removeprefix(names.PREFIX)] for k in sorted(keys)]
        logged = [values[k] for k in sorted(keys)]
        assert [None if math.isnan(v) else v for v in logged] == [None if math.isnan(v) else v for v in recorded]
    assert [values[names.PREFIX + names.SCORE] for _, values in checks] == pytest.approx(SERIES)
    assert tracker.logs[-1] == (6, {names.PREFIX + names.STOPPED: 1.0, names.PREFIX + names.SAFE_STEP: 2.0})
    # the UNet ends with the weights of step 2, which the watch did not perturb: those of an unwatched run
    safe, _ = finetune(2)
    assert [k for k, v in unet.state_dict().items() if not torch.equal(v, safe.state_dict()[k])] == []


def test_bad_input_is_refused_with_what_to_change() -> None:
    accelerator = Accelerator(cpu=True)
    with pytest.raises(TypeError, match=r"wraps a memcallback\.MemorizationWatch"):
        AcceleratedWatch(object(), accelerator)
    helper = AcceleratedWatch(MemorizationWatch(every_n_steps=2, probes=PROBES, sharpness=SHARPNESS), accelerator)
    with pytest.raises(RuntimeError, match="setup"):
        helper.check(0)
    with pytest.raises(TypeError, match="pass its scheduler"):
        helper.setup(tiny_unet())


def test_save_state_and_load_state_carry_the_stop_rule_and_history(tmp_path) -> None:
    watch = MemorizationWatch(every_n_steps=2, probes=PROBES, sharpness=SHARPNESS, stop=STOP,
                              measure_fn=scripted(SERIES))
    accelerator = Accelerator(cpu=True)
    helper = AcceleratedWatch(watch, accelerator)
    helper.setup(tiny_unet(), diffusers.DDPMScheduler(num_train_timesteps=100))  # registers it for checkpointing
    for step in (0, 2, 4):  # quiet, quiet, alarming: the rule waits one check
        helper.check(step)
    accelerator.save_state(tmp_path / "state")
    later = Accelerator(cpu=True)  # a new job, with a fresh watch registered the same way
    resumed = AcceleratedWatch(MemorizationWatch(every_n_steps=2, probes=PROBES, sharpness=SHARPNESS, stop=STOP),
                               later)
    resumed.setup(tiny_unet(), diffusers.DDPMScheduler(num_train_timesteps=100))
    later.load_state(tmp_path / "state")
    assert resumed.watch.history == watch.history and resumed.watch.history[-1]["step"] == 4.0
    assert resumed.watch.rule.state_dict() == watch.rule.state_dict() and resumed.watch.rule.wait_count == 1


# --------------------------------------------------------------------------------------------------
# Two processes (gloo): this file is also the script each rank runs
# --------------------------------------------------------------------------------------------------
def run_rank(out: Path) -> None:
    """One rank of a two-process job: a DDP-wrapped UNet, checks at 0 and 2 where only rank 1's probes rise."""
    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    series = [0.0, 0.9 if rank == 1 else 0.0]  # reduced over the 4 probes (2 per rank): 0.0, then 0.45
    watch = MemorizationWatch(every_n_steps=2, probes=PROBES, sharpness=SHARPNESS, measure_fn=scripted(series),
                              stop=StopConfig(monitor="memorization/score", threshold=0.3, min_delta=0.05, patience=1))
    unet = tiny_unet()
    baseline = MemorizationWatch(every_n_steps=2, probes=PROBES, sharpness=SHARPNESS)  # measured, not scripted
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    unet, optimizer = accelerator.prepare(unet, optimizer)
    helper = AcceleratedWatch(baseline, accelerator)
    helper.setup(unet, diffusers.DDPMScheduler(num_train_timesteps=100))
    first = helper.check(0).scalars
    helper = AcceleratedWatch(watch, accelerator)
    helper.setup(unet, diffusers.DDPMScheduler(num_train_timesteps=100))
    step, generator = 0, torch.Generator().manual_seed(rank)  # each rank its own batches, as under DDP
    while not helper.after_step(step):
        clean = torch.randn((2, 1, 8, 8), generator=generator)
        timesteps = torch.randint(0, 100, (2,), generator=generator)
        loss = F.mse_loss(unet(clean, timesteps).sample, torch.zeros_like(clean))
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        step += 1
    result = {"world_size": accelerator.num_processes, "stopped_step": watch.stopped_step, "steps": step,
              "history": watch.history, "baseline": first}
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    accelerator.wait_for_everyone()  # both ranks have written their results
    # gloo's teardown at interpreter exit can abort ("terminate called without an active exception") on a loaded
    # machine, after the work under test is done: leave without it
    os._exit(0)


@pytest.mark.slow
def test_two_processes_reduce_and_stop_together(tmp_path) -> None:
    from tiny_training import free_port

    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
               __file__, str(tmp_path)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    # only rank 1's probes rose at step 2; the score is reduced over both ranks' probes, so both stop there
    assert [(r["stopped_step"], r["steps"]) for r in ranks] == [(2, 2), (2, 2)]
    assert [h["score"] for h in ranks[0]["history"]] == [0.0, pytest.approx(0.45)]
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in ranks[0]["history"]] == [
        {k: v for k, v in h.items() if k != "seconds"} for h in ranks[1]["history"]]
    # the measured baseline covers all 4 probes: it equals one process measuring them in one batch (to float
    # rounding: the network sees batches of 2 per rank instead of 4)
    single = MemorizationWatch(every_n_steps=2, probes=PROBES, sharpness=SHARPNESS)
    model = AcceleratedWatch(single, Accelerator(cpu=True))
    model.setup(tiny_unet(), diffusers.DDPMScheduler(num_train_timesteps=100))
    expected = model.check(0).scalars
    for key in ("score", "mu_max", "mu_topk", "effective_dim", "min_mu", "flagged_fraction"):
        torch.testing.assert_close(ranks[0]["baseline"][key], expected[key], rtol=1e-4, atol=1e-5)


if __name__ == "__main__":
    torch.set_num_threads(1)
    run_rank(Path(sys.argv[1]))
