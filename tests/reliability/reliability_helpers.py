"""Helpers for the reliability tests: tiny app overrides and callbacks the app can load through Hydra.

The callbacks are added to a run with ``+callbacks.<name>._target_=reliability_helpers.<Class>`` (the
folder of this file on ``PYTHONPATH``), so the code under test is the real ``train.py`` / ``run(cfg)``.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from tiny_training import free_port

from memcallback import MemorizationMonitor

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
#: Hydra app runs of about a second: micro MLP, 8 probes every 2 steps, no validation, no final check (set
#: ``trainer.max_steps`` besides).
TINY_APP = [
    "+trainer.limit_val_batches=0", "trainer.enable_progress_bar=false",
    "data.num_train=16", "data.samples_per_epoch=6400", "data.batch_size=8",
    "model.network.hidden=32", "model.network.num_blocks=1", "model.network.time_embed_dim=16",
    "model.num_timesteps=100", "eval_samples=0", "torch_threads=1",
    "callbacks.memorization.probes.num_samples=8", "callbacks.memorization.probes.num_sampling_steps=5",
    "callbacks.memorization.sharpness.k=4", "callbacks.memorization.every_n_train_steps=2",
    "callbacks.memorization.media=none", "callbacks.memorization.save_plot=false",
]


def train_py(args: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None,
             prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run ``train.py ARGS`` in a subprocess with a hard timeout (a hang fails the test instead of CI).

    This folder is put on ``PYTHONPATH`` so the config can name the callbacks of this module; ``prefix`` goes
    before the interpreter (e.g. ``("unshare", "-n")``).
    """
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(HERE.parent), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MASTER_PORT", str(free_port()))  # DDP runs: never collide with a port left in TIME_WAIT
    return subprocess.run([*prefix, sys.executable, str(ROOT / "train.py"), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd)


def forced_stop(patience: int) -> list[str]:
    """Overrides under which the stop rule fires deterministically after ``patience`` checks past the baseline.

    In early training of the micro model the effective dimension falls at every check (measured: by about
    0.004 per 2 steps, monotonically), so with ``mode=min``, no threshold and ``min_delta=0`` every check after
    the baseline alarms and the rule fires at step ``2 * patience``.
    """
    prefix = "callbacks.memorization.stop."
    return [f"{prefix}monitor=memorization/effective_dim", f"{prefix}mode=min", f"{prefix}threshold=null",
            f"{prefix}min_delta=0", f"{prefix}patience={patience}"]


def report_overrides(out_dir: Path) -> list[str]:
    """Overrides that add :class:`RankReport` writing to ``out_dir``."""
    return ["+callbacks.report._target_=reliability_helpers.RankReport", f"+callbacks.report.out_dir={out_dir}"]


def find_monitor(trainer: pl.Trainer) -> MemorizationMonitor:
    """The trainer's :class:`MemorizationMonitor`."""
    return next(c for c in trainer.callbacks if isinstance(c, MemorizationMonitor))


def probe_digest(monitor: MemorizationMonitor) -> str:
    """A fingerprint of the probe noises this rank measures."""
    return monitor.watch.probe_set.digest()


class RankReport(Callback):
    """Write what the monitor knows on each rank: ``rank{r}_start.json`` at train start (after a resume has
    restored the monitor's state) and ``rank{r}_end.json`` at fit end.

    Args:
        out_dir: folder for the reports.
    """

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def _write(self, trainer: pl.Trainer, when: str) -> None:
        monitor = find_monitor(trainer)
        report: dict[str, Any] = {
            "global_step": trainer.global_step, "stopped_step": monitor.stopped_step, "history": monitor.history,
            "rule": monitor.rule.state_dict(), "failures": monitor.failures, "probes": probe_digest(monitor),
            "world_size": trainer.world_size,
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank{trainer.global_rank}_{when}.json").write_text(json.dumps(report))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer, "start")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer, "end")


class KillAt(Callback):
    """Kill this process with SIGKILL at the start of the batch after optimizer step ``step``: no cleanup, no
    ``finally``, no logger finalization, like a preempted job (the checkpoint of step ``step`` is written).

    Args:
        step: the global step after which the process dies.
    """

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def read_reports(out_dir: Path, when: str) -> list[dict[str, Any]]:
    """Every rank's report of ``when`` (``"start"`` or ``"end"``), by rank."""
    paths = sorted(out_dir.glob(f"rank*_{when}.json"))
    return [json.loads(p.read_text()) for p in paths]


def training_state(module: pl.LightningModule) -> dict[str, Any]:
    """Everything a check could leave behind: per-submodule train flags, per-parameter ``requires_grad``,
    device and ``.grad``, grad and inference mode, and the global RNG state."""
    params = list(module.parameters())
    return {
        "training": [m.training for m in module.modules()],
        "requires_grad": [p.requires_grad for p in params],
        "device": [p.device for p in params],
        "grad": [None if p.grad is None else p.grad.clone() for p in params],
        "grad_enabled": torch.is_grad_enabled(),
        "inference_mode": torch.is_inference_mode_enabled(),
        "rng": torch.get_rng_state(),
    }


def same_state(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two :func:`training_state` snapshots are identical (tensors compared exactly)."""

    def equal(x: Any, y: Any) -> bool:
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            return isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and torch.equal(x, y)
        if isinstance(x, list):
            return len(x) == len(y) and all(equal(u, v) for u, v in zip(x, y, strict=True))
        return x == y

    return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)


class StateSnapshots(Callback):
    """Record :func:`training_state` at the end of every training batch; put one before and one after the
    monitor in the callback list to see exactly what the monitor's hook changed."""

    def __init__(self) -> None:
        self.states: list[dict[str, Any]] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.states.append(training_state(pl_module))


def assert_same_values(a: dict[str, float], b: dict[str, float], rel: float = 0.0) -> None:
    """Two checks' values agree: same keys, values equal up to ``rel`` (NaN equals NaN). ``seconds`` and
    ``overhead`` are skipped: they are wall times (the rank's own, and the running share of the run's)."""
    assert a.keys() == b.keys()
    for key in a.keys() - {"seconds", "overhead"}:
        if not (math.isnan(a[key]) and math.isnan(b[key])):
            assert a[key] == (b[key] if rel == 0.0 else pytest.approx(b[key], rel=rel, abs=1e-6)), key
