"""Realistic-scale study: SmallUNet on 16x16 RGB photo patches, every signal side by side (issue 11).

One command per step; the reports write markdown and PNGs into ``--out`` (default ``docs/scale``) with the
command that made every table::

    python -m benchmarks.scale.study train     # train the runs, resumable (checkpoints every --every steps)
    python -m benchmarks.scale.study measure   # every signal on every checkpoint, cached per checkpoint
    python -m benchmarks.scale.study reference # the same sharpness at noised training and held-out images
    python -m benchmarks.scale.study detect    # per-sample AUROC / TPR@1%FPR per signal, ROC, most-memorized grid
    python -m benchmarks.scale.study curves    # nn rate with its interval, onset, every signal over training
    python -m benchmarks.scale.study stopping  # stop step per signal, calibrated on other runs; flag threshold
    python -m benchmarks.scale.study cost      # wall time of each signal per check, in training steps
    python -m benchmarks.scale.study transfer  # does the flag/stop threshold transfer across d (8x8 runs)?
    python -m benchmarks.scale.study lossgap   # the relative loss gap's stop rule on 16x16, 8x8 and digits runs

Runs are ``N:seed`` (``all``: every non-held-out patch) and live in ``--cache`` (default
``benchmarks/outputs/scale``, gitignored); see ``scale/runs.py``. Thresholds are calibrated on the
``--calibrate`` runs and reported on the others.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from benchmarks.scale.cost import study_cost
from benchmarks.scale.measure import SIGMA, measure_checkpoint, measured_steps, top_mu_score
from benchmarks.scale.reference import reference_checkpoint
from benchmarks.scale.report import ScaleWriter, study_curves, study_detect, study_stopping
from benchmarks.scale.runs import RunSpec, parse_spec, train
from benchmarks.scale.transfer import study_loss_gap, study_transfer


def specs(args: argparse.Namespace) -> list[RunSpec]:
    """Every run of the study (calibration runs included)."""
    return [parse_spec(text, args.steps, args.every, args.patch_size) for text in args.runs]


def _measure_run(job: tuple[Path, RunSpec, list[int], int, int, float]) -> str:
    cache, spec, steps, num_samples, num_measured, sigma = job
    torch.set_num_threads(1)
    for step in steps:
        start = time.perf_counter()
        m = measure_checkpoint(cache, spec, step, num_samples, num_measured, sigma)
        print(f"{spec.label} step {step}: nn rate {m['copied'].mean():.3f}, score "
              f"{m['per_sample']['score'].mean():.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
    return spec.label


def _reference_run(job: tuple[Path, RunSpec, list[int], float]) -> str:
    cache, spec, steps, sigma = job
    torch.set_num_threads(1)
    for step in steps:
        start = time.perf_counter()
        r = reference_checkpoint(cache, spec, step, sigma)
        print(f"{spec.label} step {step}: score at noised training images {top_mu_score(r['train']['mu']).mean():.4f}, "
              f"held-out {top_mu_score(r['val']['mu']).mean():.4f} ({time.perf_counter() - start:.0f} s)", flush=True)
    return spec.label


def study_train(args: argparse.Namespace) -> None:
    """Train (or resume) every run, ``--jobs`` at a time, one torch thread each."""
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for record in pool.map(train, [args.cache] * len(args.runs), specs(args)):
            print(f"{record['label']}: {record['evals'][-1]['step']} steps, {record['wall_s']:.0f} s", flush=True)


def study_measure(args: argparse.Namespace) -> None:
    """Measure every checkpoint of every run, one run per process, ``--jobs`` at a time."""
    jobs = [(args.cache, spec, measured_steps(spec, args.measure_every), args.samples, args.measured, args.sigma)
            for spec in specs(args)]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for label in pool.map(_measure_run, jobs):
            print(f"{label}: measured", flush=True)


def study_reference(args: argparse.Namespace) -> None:
    """Sharpness at noised training and held-out images of every checkpoint, one run per process."""
    jobs = [(args.cache, spec, measured_steps(spec, args.measure_every), args.sigma) for spec in specs(args)]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for label in pool.map(_reference_run, jobs):
            print(f"{label}: reference measured", flush=True)


REPORTS = {"detect": study_detect, "curves": study_curves, "stopping": study_stopping, "cost": study_cost,
           "transfer": study_transfer, "lossgap": study_loss_gap}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", choices=["train", "measure", "reference", *REPORTS])
    parser.add_argument("--cache", type=Path, default=Path("benchmarks/outputs/scale"))
    parser.add_argument("--out", type=Path, default=Path("docs/scale"))
    parser.add_argument("--runs", nargs="+", default=["16:0", "all:0", "32:0", "64:0", "16:1", "all:1", "32:1", "64:1"],
                        help="N:seed per run (N=all: every non-held-out patch)")
    parser.add_argument("--calibrate", nargs="+", default=["16:1", "all:1"],
                        help="runs whose thresholds are calibrated (one memorizing, one generalizing); "
                             "the others are reported")
    parser.add_argument("--steps", type=int, default=6000, help="training steps per run")
    parser.add_argument("--every", type=int, default=250, help="checkpoint grid (training steps)")
    parser.add_argument("--measure-every", type=int, default=250, help="checkpoints measured (training steps)")
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--transfer-runs", nargs="+", default=["16:0", "all:0", "16:1"],
                        help="transfer: the runs at --transfer-patch-size that test the threshold's transfer")
    parser.add_argument("--transfer-patch-size", type=int, default=8)
    parser.add_argument("--digits-cache", type=Path, default=Path(tempfile.gettempdir()) / "memcallback-validation",
                        help="lossgap: the digits runs of benchmarks/validation/study.py (trained there if missing)")
    parser.add_argument("--digits-n", nargs="+", default=["16", "64", "256", "all"], help="lossgap: digits runs")
    parser.add_argument("--digits-steps", type=int, default=8000, help="lossgap: steps of the digits runs")
    parser.add_argument("--samples", type=int, default=256, help="DDIM-50 samples for the nn rate per checkpoint")
    parser.add_argument("--measured", type=int, default=64, help="of which measured by analyze() and SLQ")
    parser.add_argument("--sigma", type=float, default=SIGMA, help="noise level of the measurement (measure, "
                        "detect, curves, stopping)")
    parser.add_argument("--jobs", type=int, default=2, help="processes at a time")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.study == "train":
        study_train(args)
    elif args.study == "measure":
        study_measure(args)
    elif args.study == "reference":
        study_reference(args)
    else:
        ScaleWriter(args.out, args.study).run(REPORTS[args.study], args)


if __name__ == "__main__":
    main()
