"""Issue 6, item 7: 200 checks in one process without memory growth or slowing down.

The tiny model trains 200 steps with a check after every one (matrix-free solver, so the warm-start
eigenvectors are carried from check to check, with a fixed number of Lanczos steps so every check does the
same work). Around the monitor's hook, two callbacks time it and record
the process's resident memory; live tensors are counted (through ``gc``) after checks 50 and 200. Growth is
judged between check 50 and check 200, after allocator and import warm-up.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from tiny_training import make_data, make_module, make_trainer

from memcallback import MemorizationMonitor, ProbeConfig, SharpnessConfig

CHECKS = 200
WARM = 50  # checks before the reference measurement
PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def live_tensors() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, torch.Tensor))


class HookClock(Callback):
    """Put one before and one after the monitor: ``after.times[i] - before.times[i]`` is the monitor's hook."""

    def __init__(self, measure_memory: bool = False) -> None:
        self.times: list[float] = []
        self.rss: list[int] = []
        self.tensors: dict[int, int] = {}
        self.measure_memory = measure_memory

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.times.append(time.perf_counter())
        if self.measure_memory:
            self.rss.append(resident_bytes())
            if trainer.global_step in (WARM, CHECKS):
                self.tensors[trainer.global_step] = live_tensors()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*did not reach tol")
def test_200_checks_without_memory_growth_or_slowdown(tmp_path) -> None:
    # a fixed amount of work per check (a Krylov budget of 8 steps): Lanczos run to a reachable tol takes
    # 30-65 ms per check here depending on the weights, which would hide or fake a slowdown
    sharpness = SharpnessConfig(k=2, solver="lanczos", krylov_steps=8, trace_probes=2, asymmetry_probes=1)
    monitor = MemorizationMonitor(every_n_train_steps=1, check_on_train_start=False,
                                  probes=ProbeConfig(num_samples=4, num_sampling_steps=3), sharpness=sharpness,
                                  save_plot=False, media="none")
    before, after = HookClock(), HookClock(measure_memory=True)
    trainer = make_trainer(tmp_path, [before, monitor, after], max_steps=CHECKS)
    trainer.fit(make_module(), datamodule=make_data())

    assert len(monitor.history) == CHECKS and monitor.failures == 0
    hook = [b - a for a, b in zip(before.times, after.times, strict=True)]
    first, last = statistics.median(hook[:WARM]), statistics.median(hook[-WARM:])
    assert last < 2 * first, f"the check slowed down: median {first * 1e3:.1f} ms -> {last * 1e3:.1f} ms"
    growth = after.rss[-1] - after.rss[WARM - 1]
    assert growth < 8 * 2**20, f"resident memory grew by {growth / 2**20:.1f} MiB over {CHECKS - WARM} checks"
    assert after.tensors[CHECKS] - after.tensors[WARM] <= 2, after.tensors  # nothing accumulates per check
