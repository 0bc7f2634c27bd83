"""Conditional detection on the duplicated-class digits experiment (issue 7): the paper's metric vs Wen's.

    python -m benchmarks.conditional.study [--duplicate-class 9] [--steps 6000] [--samples-per-class 32] [--quick]

Trains (or loads from ``--cache``) a class-conditional ``ResidualMLP((1, 8, 8), num_classes=10)``
``DiffusionModule`` with label dropout 0.1 on ``DigitsDataModule(duplicate_class=k)``: class ``k`` is one
training image repeated 160 times, the nine other classes keep all their training images. Then, for
``--samples-per-class`` samples of every class, each averaged over ``n`` generations (initial noises; the
same noises for every class, as the paper's per-prompt seed reset), it computes at the first sampling step
(``t = T-1``, at ``x_T``) the paper's ``||H^D s^D||`` and Wen et al.'s ``||s^D||`` with
:func:`memcallback.measure.conditional.conditional_report`, and the AUROC separating class ``k``'s samples from
the others. Ground truth: the DDIM samples (guidance ``--guidance-scale``) from the same noises, labelled
by the nearest-neighbour ratio test against the unique training images; the nn rate per class confirms
that class ``k`` is the memorized one. Prints markdown tables with the command. One thread throughout.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

from memcallback.app.data import DigitsDataModule
from memcallback.app.models import DiffusionModule, ResidualMLP
from memcallback.measure.conditional import conditional_report

NUM_CLASSES = 10


def datamodule(duplicate_class: int) -> DigitsDataModule:
    """The digits with ``duplicate_class`` collapsed onto one image (160 copies), already set up."""
    dm = DigitsDataModule(duplicate_class=duplicate_class, samples_per_epoch=64000, batch_size=128, seed=0)
    dm.setup("fit")
    return dm


def trained_module(cache: Path, duplicate_class: int, steps: int) -> tuple[DiffusionModule, float]:
    """The trained conditional module (from the cache when present) and its training wall time (0 if cached)."""
    path = cache / f"conditional-dup{duplicate_class}-steps{steps}.ckpt"
    wall = 0.0
    if not path.exists():
        pl.seed_everything(0, verbose=False)
        module = DiffusionModule(ResidualMLP((1, 8, 8), hidden=256, num_blocks=3, num_classes=NUM_CLASSES),
                                 cond_drop_prob=0.1)
        trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=steps, max_epochs=-1, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=cache)
        start = time.perf_counter()
        trainer.fit(module, datamodule=datamodule(duplicate_class))
        wall = time.perf_counter() - start
        cache.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(path)
    module = DiffusionModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    return module.eval(), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duplicate-class", type=int, default=9)
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--samples-per-class", type=int, default=32)
    parser.add_argument("--generations", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--guidance-scale", type=float, default=1.0,
                        help="CFG weight of the ground-truth samples (the metrics do not depend on it)")
    parser.add_argument("--sampling-steps", type=int, default=50)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3],
                        help="noise seeds; each gives an independent set of samples")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "memcallback-conditional")
    parser.add_argument("--quick", action="store_true", help="1500 steps, 8 samples per class (a smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.samples_per_class = 1500, 8
    torch.set_num_threads(1)
    k = args.duplicate_class
    module, wall = trained_module(args.cache, k, args.steps)
    train_data = datamodule(k).unique_train_data()
    labels = torch.arange(NUM_CLASSES)
    command = "python -m benchmarks.conditional.study " + " ".join(sys.argv[1:])
    print(f"Command: `{command.strip()}`\n")
    print(f"Model: ResidualMLP 256x3, num_classes=10, cond_drop_prob 0.1, {args.steps} steps of batch 128 on "
          f"digits with class {k} = one image x 160 ({len(train_data)} unique training images)"
          + (f"; trained in {wall:.0f} s" if wall else "; loaded from cache") + ".\n")

    rows, per_class = [], {}
    for n in args.generations:
        results = []
        for seed in args.seeds:
            start = time.perf_counter()
            report = conditional_report(module, labels, num_samples_per_cond=args.samples_per_class,
                                        num_generations=n, seed=seed, train_data=train_data,
                                        guidance_scale=args.guidance_scale, num_sampling_steps=args.sampling_steps)
            results.append((report.auroc([k]), time.perf_counter() - start))
            per_class.setdefault(n, report.per_condition())  # the first seed's report
        for metric in ("hds", "sd_norm"):
            values = [a[metric] for a, _ in results]
            rows.append([str(n), "‖H^D s^D‖ (paper)" if metric == "hds" else "‖s^D‖ (Wen)",
                         " / ".join(f"{v:.3f}" for v in values), f"{statistics.mean(values):.3f}",
                         f"{min(values):.3f}", f"{statistics.mean(s for _, s in results):.1f}"])

    print(f"AUROC separating class {k} ({args.samples_per_class} samples) from the other nine classes "
          f"({9 * args.samples_per_class} samples) at the first sampling step t = {report.timestep} (x_T, "
          f"sigma_t = {report.sigma:.5f}), each sample's metric the mean over n generations; one AUROC per noise "
          f"seed {args.seeds}:\n")
    print("| n | metric | AUROC per seed | mean | min | s per report (metrics + DDIM samples) |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")

    n = args.generations[-1]
    stats = per_class[n]
    print(f"\nPer class (n = {n}, seed {args.seeds[0]}): mean metrics over its samples and nn rate of its DDIM samples "
          f"(guidance {args.guidance_scale}, {args.sampling_steps} steps; ratio test < 1/3 against the unique "
          "training images):\n")
    print("| class | mean ‖H^D s^D‖ | mean ‖s^D‖ | nn rate |")
    print("|---|---|---|---|")
    for c in range(NUM_CLASSES):
        name = f"**{c}** (duplicated)" if c == k else str(c)
        print(f"| {name} | {stats['hds'][c]:.4f} | {stats['sd_norm'][c]:.4f} | {stats['nn_rate'][c]:.2f} |")


if __name__ == "__main__":
    main()
