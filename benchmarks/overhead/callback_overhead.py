"""Training time with and without MemorizationMonitor at its default settings, measured side by side.

    python -m benchmarks.overhead.callback_overhead [--case digits|unet32] [--steps N] [--repeats 2] [--every 250]
                                           [--every-n-checks 1]

Cases (both batch 128):

* ``digits``: the digits_memorize reference model (ResidualMLP 256x3 on 16 digits; 8x8 data, dense Hessian).
* ``unet32``: ``SmallUNet`` 3x32x32 (base 32, mults [1, 2]) on 32 RGB 32x32 patches (``PatchesDataModule``):
  the matrix-free path.

Trains for ``--steps`` steps (default 2000 for digits, 250 for unet32), alternating runs without and with the
callback so machine noise hits both alike, and prints the median wall time of each and the overhead ratio,
plus the overhead projected to the schedule: median seconds per check / (``--every`` x seconds per training
step without the callback). The callback uses its defaults (probes, sharpness settings, the loss gap on the data
module's held-out images, a check every ``--every`` steps plus the baseline) except that it never stops training,
so both runs cover the same steps; plots and media are off since the benchmark has no logger. With
``--every-n-checks n`` only every n-th check measures the probes (``ProbeConfig.every_n_checks``): the projection
then uses the mean cost of a cycle, ``(full + (n - 1) light) / n``, from the medians of the full and the light
checks (run enough steps for at least one light check). ``--threads`` defaults to 1, as in the experiments.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import lightning.pytorch as pl
import torch

from memcallback import MemorizationMonitor, ProbeConfig
from memcallback.app.data import DigitsDataModule, PatchesDataModule
from memcallback.app.models import DiffusionModule, ResidualMLP, SmallUNet
from memcallback.core import StopConfig
from memcallback.measure import names

DEFAULT_STEPS = {"digits": 2000, "unet32": 250}
SCHEDULE = 250  # the callback's default every_n_train_steps, also projected to


def build(case: str, steps: int) -> tuple[DiffusionModule, pl.LightningDataModule]:
    if case == "digits":
        return (DiffusionModule(ResidualMLP((1, 8, 8), hidden=256, num_blocks=3)),
                DigitsDataModule(batch_size=128, num_train=16, samples_per_epoch=64000, seed=0))
    return (DiffusionModule(SmallUNet((3, 32, 32), base_channels=32, channel_mults=(1, 2)), lr=1e-3),
            PatchesDataModule(patch_size=32, batch_size=128, num_train=32, samples_per_epoch=128 * steps, seed=0))


def train_once(case: str, steps: int, every: int, every_n_checks: int,
               with_monitor: bool) -> tuple[float, MemorizationMonitor | None]:
    pl.seed_everything(0, verbose=False)
    module, data = build(case, steps)
    # stop_training=False: the run must cover the same steps with and without the callback
    monitor = (MemorizationMonitor(every_n_train_steps=every, stop=StopConfig(stop_training=False), save_plot=False,
                                   media="none", probes=ProbeConfig(every_n_checks=every_n_checks))
               if with_monitor else None)
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
    parser.add_argument("--case", choices=sorted(DEFAULT_STEPS), default="digits")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default: per case)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--every", type=int, default=SCHEDULE, help="check schedule (the callback's default)")
    parser.add_argument("--every-n-checks", type=int, default=ProbeConfig().every_n_checks,
                        help="probes at every n-th check, the loss gap alone between (ProbeConfig.every_n_checks)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    steps = args.steps or DEFAULT_STEPS[args.case]
    torch.set_num_threads(args.threads)
    times: dict[bool, list[float]] = {False: [], True: []}
    check_seconds: dict[bool, list[float]] = {True: [], False: []}  # full / light checks
    # warm-up (imports, first calls), untimed
    train_once(args.case, min(steps, 20), args.every, args.every_n_checks, with_monitor=True)
    for _ in range(args.repeats):
        for with_monitor in (False, True):
            seconds, monitor = train_once(args.case, steps, args.every, args.every_n_checks, with_monitor)
            times[with_monitor].append(seconds)
            if monitor is not None:
                for h in monitor.history:
                    check_seconds[names.SCORE in h].append(h["seconds"])
    base, watched = statistics.median(times[False]), statistics.median(times[True])
    monitor = MemorizationMonitor(probes=ProbeConfig(every_n_checks=args.every_n_checks))
    print(f"case {args.case}: torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"{steps} steps, {args.repeats} repeats (alternating), a check every {args.every} steps")
    print(f"callback defaults: {monitor.probes}; {monitor.sharpness}")
    print("| run | median wall time (s) | all runs (s) |")
    print("|---|---|---|")
    print(f"| without callback | {base:.1f} | {', '.join(f'{t:.1f}' for t in times[False])} |")
    setting = "defaults" if args.every_n_checks == 1 else f"defaults, every_n_checks={args.every_n_checks}"
    print(f"| with MemorizationMonitor ({setting}) | {watched:.1f} | {', '.join(f'{t:.1f}' for t in times[True])} |")
    all_checks = check_seconds[True] + check_seconds[False]
    per_run = sum(all_checks) / args.repeats
    n = args.every_n_checks
    full = statistics.median(check_seconds[True])
    light = statistics.median(check_seconds[False]) if check_seconds[False] else None
    if n > 1 and light is None:
        raise SystemExit(f"--every-n-checks {n}: no light check ran; train for more steps than --every.")
    per_check = full if n == 1 else (full + (n - 1) * light) / n
    step_seconds = base / steps
    print(f"\noverhead (median wall times): {100 * (watched / base - 1):+.1f}%")
    print(f"time inside checks: {per_run:.2f} s per run = {100 * per_run / base:.1f}% of the run without callback "
          f"({len(all_checks) // args.repeats} checks per run; full: median {full:.2f} s"
          + ("" if light is None else f", light (loss gap only): median {light:.2f} s") + ")")
    if n > 1:
        print(f"a cycle of {n} checks (1 full, {n - 1} light) costs {per_check:.2f} s per check on average")
    projected = ", ".join(f"every {n} steps: {100 * per_check / (n * step_seconds):.1f}%"
                          for n in dict.fromkeys((args.every, SCHEDULE)))
    print(f"one check = {per_check / step_seconds:.1f} training steps ({step_seconds:.3f} s each); projected "
          f"overhead at a check {projected}")


if __name__ == "__main__":
    main()
