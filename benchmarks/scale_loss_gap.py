"""The relative loss gap (``memcallback.measure.loss_gap``) on every cached checkpoint of the patch and digits runs.

Per checkpoint: ``LOSS_GAP_IMAGES`` training images (cycled when ``N`` is smaller) and as many held-out images,
``ProbeConfig().loss_gap_levels`` noise levels, probe seed 0 — what the callback measures with
``probes.loss_gap_images = LOSS_GAP_IMAGES``. The mean errors per noise level are cached in the run folder
(``loss_gap.json``); the gap is computed from them.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch
from scale_report import Run, ScaleWriter, load_runs
from scale_runs import checkpoint, datamodule, run_dir
from scale_transfer import stop_verdict
from torch import Tensor
from validation_gap import stop_verdict as digits_verdict
from validation_report import runs as digits_runs
from validation_report import specs as digits_specs
from validation_runs import CHECK_EVERY, fmt
from validation_runs import checkpoint as digits_checkpoint
from validation_runs import datamodule as digits_datamodule
from validation_runs import run_dir as digits_dir

from memcallback.core import StopConfig, StopRule
from memcallback.diffusion import DiffusionModel
from memcallback.measure.loss_gap import loss_gap, relative_gap

#: training and held-out images of each kind
LOSS_GAP_IMAGES = 64
#: noise levels spread over the schedule
LOSS_GAP_LEVELS = 10
#: the rule under test, calibrated on the 16x16 seed-1 runs (docs/scale/loss_gap.md)
LOSS_GAP_RULE = StopConfig(monitor="memorization/loss_gap", threshold=0.25, min_delta=0.0, patience=1)


def loss_gap_history(folder: Path, steps: list[int], load: Callable[[int], DiffusionModel], train: Tensor,
                     heldout: Tensor) -> list[dict]:
    """``[{step, timesteps, train, heldout, gap}]`` per checkpoint (``train``/``heldout``: the mean error per noise
    level), cached in ``folder/loss_gap.json``."""
    path = folder / "loss_gap.json"
    cached = {row["step"]: row for row in json.loads(path.read_text())} if path.exists() else {}
    if all(s in cached for s in steps):
        return [cached[s] for s in steps]
    torch.set_num_threads(1)
    n = LOSS_GAP_IMAGES
    train_x, heldout_x = train[torch.arange(n) % len(train)], heldout[:n]
    for step in steps:
        if step not in cached:
            result = loss_gap(load(step), train_x, heldout_x, num_levels=LOSS_GAP_LEVELS, seed=0)
            cached[step] = {"step": step, "timesteps": result.timesteps.tolist(),
                            "train": result.train.mean(dim=0).tolist(), "heldout": result.heldout.mean(dim=0).tolist(),
                            "gap": result.gap}
    path.write_text(json.dumps([cached[s] for s in sorted(cached)]))
    return [cached[s] for s in steps]


def gap_of(row: dict) -> float:
    """The relative loss gap of one cached row."""
    return relative_gap(torch.tensor(row["train"]), torch.tensor(row["heldout"]))


def patch_gaps(args: argparse.Namespace, run: Run) -> list[tuple[int, float]]:
    """``(step, loss gap)`` of a patch run at step 0 and at every measured checkpoint."""
    dm = datamodule(run.spec)
    steps = [0, *run.steps]
    rows = loss_gap_history(run_dir(args.cache, run.spec), steps, lambda s: checkpoint(args.cache, run.spec, s),
                            dm.unique_train_data(), dm.heldout_data())
    return [(row["step"], gap_of(row)) for row in rows]


def rule_stop(gaps: list[tuple[int, float]]) -> int | None:
    """Where ``LOSS_GAP_RULE`` fed every check's gap, the step-0 baseline included, stops (``None``: never)."""
    rule = StopRule(LOSS_GAP_RULE)
    return next((step for step, gap in gaps if rule.update(gap)), None)


def study_loss_gap(args: argparse.Namespace, w: ScaleWriter) -> None:
    """The pre-registered test of ``docs/scale/loss_gap.md`` on the patch runs (a, b) and the digits runs (c)."""
    big = load_runs(args)
    small = load_runs(argparse.Namespace(**{**vars(args), "runs": args.transfer_runs, "calibrate": [],
                                            "patch_size": args.transfer_patch_size}))
    sets = [("16x16 calibration runs", [r for r in big if r.calibration]),
            ("(a) 16x16 reported runs", [r for r in big if not r.calibration]),
            (f"(b) {args.transfer_patch_size}x{args.transfer_patch_size}x3 patches", small)]
    rows, passed = [], {}
    for name, runs in sets:
        for run in runs:
            gaps = patch_gaps(args, run)
            verdict = stop_verdict(run, rule_stop(gaps))
            passed.setdefault(name, []).append("in time" in verdict or verdict.startswith("no stop")
                                               or (verdict == "never" and run.memorizing))
            rows.append([name, run.name, verdict, fmt(max(g for _, g in gaps), 3),
                         " ".join(f"{g:.2f}" for _, g in gaps[:9])])
    rows_c = []
    digits = argparse.Namespace(n=args.digits_n, steps=args.digits_steps, cache=args.digits_cache, jobs=args.jobs)
    for spec, record in zip(digits_specs(digits), digits_runs(digits), strict=True):
        dm = digits_datamodule(spec.num_train)
        steps = list(range(0, spec.max_steps + 1, CHECK_EVERY))
        history = loss_gap_history(digits_dir(args.digits_cache, spec), steps,
                                   lambda s, spec=spec: digits_checkpoint(args.digits_cache, spec, s),
                                   dm.unique_train_data(), dm.heldout_data())
        gaps = [(row["step"], gap_of(row)) for row in history]
        stop = rule_stop(gaps)
        rate, _, r10, verdict = digits_verdict(spec, record, stop)
        passed.setdefault("(c) digits", []).append(verdict in ("in time", "no stop (correct)", "never"))
        rows_c.append([str(record["n"]), fmt(stop), fmt(rate.get(stop), 2), fmt(r10), verdict,
                       fmt(max(g for _, g in gaps), 3), " ".join(f"{g:.2f}" for _, g in gaps[:9])])
    w.table(f"The loss-gap rule of loss_gap.md (threshold {LOSS_GAP_RULE.threshold}, min_delta "
            f"{LOSS_GAP_RULE.min_delta}, patience {LOSS_GAP_RULE.patience}; calibrated on the 16x16 seed-1 runs) on "
            f"the patch runs, {LOSS_GAP_IMAGES} training + {LOSS_GAP_IMAGES} held-out patches, {LOSS_GAP_LEVELS} noise "
            "levels: stop step (nn rate there [95% CI] of the measured samples)",
            ["runs", "run", "stop", "max gap", "gap at steps 0, 250, ..., 2000"], rows)
    w.table(f"The same rule on the digits runs (ResidualMLP, epsilon prediction), every {CHECK_EVERY} steps; nn "
            "rate of the 64 callback probes", ["N", "stop", "nn rate there", "rate first > 10%", "verdict", "max gap",
                                               "gap at steps 0, 250, ..., 2000"], rows_c)
    w.table("Pre-registered criteria (docs/scale/loss_gap.md; test (d), the app, is run separately)",
            ["test", "holds"], [[name, "yes" if all(ok) else "**no**"] for name, ok in passed.items()
                                if not name.startswith("16x16 calibration")])
