"""Training time with and without MemorizationMonitor at its default schedule, measured side by side.

    python benchmarks/callback_overhead.py [--steps 2000] [--repeats 2]

Trains the digits_memorize reference model (ResidualMLP 256x3 on 16 digits, batch 128) for ``--steps``
steps, alternating runs without and with the callback so machine noise hits both alike, and prints the
median wall time of each and the overhead ratio. The callback uses its defaults (a check every 500 steps
plus the baseline, 64 probes, DDIM-50, dense Hessian for 8x8 data) except that it never stops training, so
both runs cover the same steps; plots and media are off since the benchmark has no logger. ``--threads``
defaults to 1, as in the digits experiments.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import lightning.pytorch as pl
import torch

from memcallback import MemorizationMonitor
from memcallback.app.data import DigitsDataModule
from memcallback.app.models import DiffusionModule, ResidualMLP


def train_once(steps: int, with_monitor: bool) -> tuple[float, MemorizationMonitor | None]:
    pl.seed_everything(0, verbose=False)
    module = DiffusionModule(ResidualMLP((1, 8, 8), hidden=256, num_blocks=3))
    data = DigitsDataModule(batch_size=128, num_train=16, samples_per_epoch=64000, seed=0)
    # stop_training=False: the run must cover the same steps with and without the callback
    monitor = MemorizationMonitor(save_plot=False, stop_training=False) if with_monitor else None
    with tempfile.TemporaryDirectory() as root:
        trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                             num_sanity_val_steps=0, default_root_dir=root,
                             callbacks=[monitor] if monitor is not None else [])
        start = time.perf_counter()
        trainer.fit(module, datamodule=data)
        return time.perf_counter() - start, monitor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    times: dict[bool, list[float]] = {False: [], True: []}
    check_seconds: list[float] = []
    train_once(200, with_monitor=True)  # warm-up (imports, allocator, first torch.func call), not timed
    for _ in range(args.repeats):
        for with_monitor in (False, True):
            seconds, monitor = train_once(args.steps, with_monitor)
            times[with_monitor].append(seconds)
            if monitor is not None:
                check_seconds += [h["seconds"] for h in monitor.history]
    base, watched = statistics.median(times[False]), statistics.median(times[True])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"{args.steps} steps, {args.repeats} repeats (alternating)")
    print("| run | median wall time (s) | all runs (s) |")
    print("|---|---|---|")
    print(f"| without callback | {base:.1f} | {', '.join(f'{t:.1f}' for t in times[False])} |")
    print(f"| with MemorizationMonitor (defaults) | {watched:.1f} | {', '.join(f'{t:.1f}' for t in times[True])} |")
    per_run = sum(check_seconds) / args.repeats
    print(f"\noverhead (median wall times): {100 * (watched / base - 1):+.1f}%")
    print(f"time inside checks: {per_run:.2f} s per run = {100 * per_run / base:.1f}% of the run without callback "
          f"({len(check_seconds) // args.repeats} checks per run, median {statistics.median(check_seconds):.2f} s)")


if __name__ == "__main__":
    main()
