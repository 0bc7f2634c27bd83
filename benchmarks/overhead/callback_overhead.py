"""Training wall time without the callback, with it at its defaults (the cost governor on), and with it ungoverned,
measured side by side: real Lightning runs, alternating.

    python -m benchmarks.overhead.callback_overhead [--case digits|patches16|unet32] [--steps N] [--repeats 2]
                                                    [--no-ungoverned]

Cases:

* ``digits``: the digits demo model (ResidualMLP 256x3 on 16 digits, 8x8, batch 128; dense Hessian).
* ``patches16``: ``experiment=patches_memorize`` (SmallUNet base 32 on 32 RGB 16x16 patches, batch 32).
* ``unet32``: SmallUNet 3x32x32 (base 32, mults [1, 2]) on 32 RGB 32x32 patches, batch 128.

Every case runs the default stop rule (``monitor="auto"``: the loss gap, the data modules having held-out images), so
the governed baseline is light and full checks come between light ones as the budget allows.

Each repeat trains ``--steps`` steps (default 2000 for digits, 1000 for patches16, 250 for unet32) without the
callback, with it (defaults: a check every ``--every`` steps plus the baseline, 64 probes, DDIM-50, the loss gap on
the data module's held-out images), and with ``GovernorConfig(max_overhead=None)``, in that order, after one
untimed warm-up run (``--no-ungoverned`` leaves the third variant out). The callback never stops training here
(``stop_training=False``), so all runs cover the same steps; plots and media are off (no logger). Prints the median
wall time of each variant with every run, the added time ``with / without - 1`` from the medians and its spread over
the repeats (each repeat's own pair), the same from the process's CPU time (less sensitive to other jobs on a shared
machine: one torch thread), and what the governed callback measured. A short run pays its first checks over few
intervals, so its governed overhead can be above the long-run one (``benchmarks/overhead/governed.py`` projects that
from the same policy).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time

import lightning.pytorch as pl
import torch

from memcallback import GovernorConfig, MemorizationMonitor
from memcallback.app.data import DigitsDataModule, PatchesDataModule
from memcallback.app.models import DiffusionModule, ResidualMLP, SmallUNet
from memcallback.core import StopConfig
from memcallback.measure import names

DEFAULT_STEPS = {"digits": 2000, "patches16": 1000, "unet32": 250}
SCHEDULE = 250  # the callback's default every_n_train_steps
VARIANTS = ("without callback", "with MemorizationMonitor (defaults)", "with MemorizationMonitor, ungoverned")
STOP = StopConfig(stop_training=False)  # the default rule (monitor="auto"), warning only: every run covers all steps


def build(case: str, steps: int) -> tuple[DiffusionModule, pl.LightningDataModule]:
    if case == "digits":
        return (DiffusionModule(ResidualMLP((1, 8, 8), hidden=256, num_blocks=3)),
                DigitsDataModule(batch_size=128, num_train=16, samples_per_epoch=64000, seed=0))
    if case == "patches16":
        return (DiffusionModule(SmallUNet((3, 16, 16), base_channels=32, channel_mults=(1, 2)), lr=1e-3),
                PatchesDataModule(batch_size=32, num_train=32, samples_per_epoch=32 * steps, seed=0))
    return (DiffusionModule(SmallUNet((3, 32, 32), base_channels=32, channel_mults=(1, 2)), lr=1e-3),
            PatchesDataModule(patch_size=32, batch_size=128, num_train=32, samples_per_epoch=128 * steps, seed=0))


def train_once(case: str, steps: int, every: int, variant: int,
               accelerator: str) -> tuple[float, float, MemorizationMonitor | None]:
    """Wall and CPU seconds of one ``trainer.fit``, and its monitor (``None`` without the callback)."""
    pl.seed_everything(0, verbose=False)
    module, data = build(case, steps)
    monitor = None
    if variant > 0:
        governor = GovernorConfig() if variant == 1 else GovernorConfig(max_overhead=None)
        monitor = MemorizationMonitor(every_n_train_steps=every, stop=STOP, governor=governor,
                                      save_plot=False, media="none")
    with tempfile.TemporaryDirectory() as root:
        trainer = pl.Trainer(accelerator=accelerator, devices=1, max_steps=steps, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             limit_val_batches=0,
                             num_sanity_val_steps=0, default_root_dir=root,
                             callbacks=[monitor] if monitor is not None else [])
        start, cpu = time.perf_counter(), time.process_time()
        trainer.fit(module, datamodule=data)
        return time.perf_counter() - start, time.process_time() - cpu, monitor


def describe(history: list[dict[str, float]], num_probes: int) -> str:
    """What the governed checks measured: counts of full checks (sharpness measured), cut ones (on fewer probes),
    labels-only and loss-gap checks, and the last logged overhead."""
    checks = [(math.isfinite(row.get(names.SCORE, math.nan)), row.get(names.PROBES_MEASURED)) for row in history]
    full = sum(scored and p == num_probes for scored, p in checks)
    cut = sorted({int(p) for scored, p in checks if scored and p < num_probes})
    labels = sum(not scored and p > 0 for scored, p in checks)
    light = sum(p == 0 for _, p in checks)
    images = sorted({int(row[names.LOSS_GAP_IMAGES_MEASURED]) for row in history
                     if names.LOSS_GAP_IMAGES_MEASURED in row})
    reduced = sum(scored for scored, _ in checks) - full
    return (f"{len(history)} checks: {full} with every probe, {reduced} on fewer probes ({cut}), {labels} without a "
            f"score (labels-only or cut short), {light} loss gap only; loss-gap images {images}; logged overhead at "
            f"the end {history[-1].get(names.OVERHEAD, math.nan):.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=sorted(DEFAULT_STEPS), default="digits")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default: per case)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--every", type=int, default=SCHEDULE, help="check schedule (the callback's default)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--accelerator", default="cpu", help="the Trainer's accelerator (gpu: benchmarks/gpu.sh)")
    parser.add_argument("--no-ungoverned", action="store_true", help="time only without and with the defaults")
    args = parser.parse_args()
    steps = args.steps or DEFAULT_STEPS[args.case]
    torch.set_num_threads(args.threads)
    variants = VARIANTS[:2] if args.no_ungoverned else VARIANTS
    times: list[list[float]] = [[] for _ in variants]
    cpu_times: list[list[float]] = [[] for _ in variants]
    governed: MemorizationMonitor | None = None
    train_once(args.case, min(steps, 20), args.every, 1, args.accelerator)  # warm-up (imports, first calls), untimed
    for _ in range(args.repeats):
        for variant in range(len(variants)):
            seconds, cpu, monitor = train_once(args.case, steps, args.every, variant, args.accelerator)
            times[variant].append(seconds)
            cpu_times[variant].append(cpu)
            print(f"  {variants[variant]}: {seconds:.1f} s wall, {cpu:.1f} s CPU", flush=True)
            if variant == 1:
                governed = monitor
    print(f"case {args.case} on {args.accelerator}: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, "
          f"{steps} steps, {args.repeats} repeats (in the order of the table), a check every {args.every} steps "
          "plus the baseline")
    print("| run | median wall time (s) | all runs (s) | added to training: from the medians [per-repeat spread] | "
          "median CPU time (s) | added, CPU time [spread] |")
    print("|---|---|---|---|---|---|")
    for variant, name in enumerate(variants):
        runs = ", ".join(f"{t:.1f}" for t in times[variant])
        cells = []
        for series in (times, cpu_times):
            median = statistics.median(series[variant])
            if variant == 0:
                cells += [f"{median:.1f}", "-"]
                continue
            paired = [w / b - 1 for w, b in zip(series[variant], series[0], strict=True)]
            cells += [f"{median:.1f}", f"**{median / statistics.median(series[0]) - 1:+.1%}** [{min(paired):+.1%} - "
                                       f"{max(paired):+.1%}]"]
        print(f"| {name} | {cells[0]} | {runs} | {cells[1]} | {cells[2]} | {cells[3]} |")
    print(f"\ngoverned, last repeat: {describe(governed.history, governed.probes.num_samples)}")


if __name__ == "__main__":
    main()
