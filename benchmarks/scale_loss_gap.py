"""The relative loss gap (``memcallback.measure.loss_gap``) on every cached checkpoint of the patch and digits runs.

Per checkpoint: ``LOSS_GAP_IMAGES`` training images and as many held-out images, ``NUM_LEVELS`` noise levels, noise
seed 0. Two selections of the images: ``"first"``, the pre-registered one of docs/scale/loss_gap.md (the first
training images, cycled when ``N`` is smaller, and the first held-out images), and ``"random"``, what the callback
measures with ``probes.loss_gap_images = LOSS_GAP_IMAGES`` since the test (seeded random rows,
``memcallback.core.sample_rows``). The mean errors per noise level are cached in the run folder
(``loss_gap_<selection>.json``); the gap is computed from them.
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
from validation_runs import RunSpec as DigitsSpec
from validation_runs import checkpoint as digits_checkpoint
from validation_runs import datamodule as digits_datamodule
from validation_runs import run_dir as digits_dir

from memcallback.core import ProbeConfig, StopConfig, StopRule, sample_rows
from memcallback.diffusion import DiffusionModel
from memcallback.measure.loss_gap import NUM_LEVELS, loss_gap, relative_gap

#: training and held-out images of each kind
LOSS_GAP_IMAGES = 64
#: how the images are chosen: pre-registered, then as the callback does
SELECTIONS = ("first", "random")
#: the rule under test, calibrated on the 16x16 seed-1 runs (docs/scale/loss_gap.md)
LOSS_GAP_RULE = StopConfig(monitor="memorization/loss_gap", threshold=0.25, min_delta=0.0, patience=1)


def select(train: Tensor, heldout: Tensor, selection: str) -> tuple[Tensor, Tensor]:
    """``LOSS_GAP_IMAGES`` training and held-out images chosen by ``selection`` (see the module docstring)."""
    n, seed = LOSS_GAP_IMAGES, ProbeConfig().seed
    if selection == "first":
        return train[torch.arange(n) % len(train)], heldout[:n]
    return train[sample_rows(len(train), n, seed)], heldout[sample_rows(len(heldout), n, seed + 1)]


def loss_gap_history(folder: Path, steps: list[int], load: Callable[[int], DiffusionModel], train: Tensor,
                     heldout: Tensor, selection: str) -> list[dict]:
    """``[{step, timesteps, train, heldout, gap}]`` per checkpoint (``train``/``heldout``: the mean error per noise
    level), cached in ``folder/loss_gap_<selection>.json``."""
    path = folder / f"loss_gap_{selection}.json"
    cached = {row["step"]: row for row in json.loads(path.read_text())} if path.exists() else {}
    if all(s in cached for s in steps):
        return [cached[s] for s in steps]
    torch.set_num_threads(1)
    train_x, heldout_x = select(train, heldout, selection)
    for step in steps:
        if step not in cached:
            result = loss_gap(load(step), train_x, heldout_x, num_levels=NUM_LEVELS, seed=ProbeConfig().seed)
            cached[step] = {"step": step, "timesteps": result.timesteps.tolist(),
                            "train": result.train.mean(dim=0).tolist(), "heldout": result.heldout.mean(dim=0).tolist(),
                            "gap": result.gap}
    path.write_text(json.dumps([cached[s] for s in sorted(cached)]))
    return [cached[s] for s in steps]


def gap_of(row: dict) -> float:
    """The relative loss gap of one cached row."""
    return relative_gap(torch.tensor(row["train"]), torch.tensor(row["heldout"]))


def patch_gaps(args: argparse.Namespace, run: Run, selection: str) -> list[tuple[int, float]]:
    """``(step, loss gap)`` of a patch run at step 0 and at every measured checkpoint."""
    dm = datamodule(run.spec)
    rows = loss_gap_history(run_dir(args.cache, run.spec), [0, *run.steps],
                            lambda s: checkpoint(args.cache, run.spec, s), dm.unique_train_data(), dm.heldout_data(),
                            selection)
    return [(row["step"], gap_of(row)) for row in rows]


def digits_gaps(args: argparse.Namespace, spec: DigitsSpec, selection: str) -> list[tuple[int, float]]:
    """``(step, loss gap)`` of a digits run at every ``CHECK_EVERY`` steps, step 0 included."""
    dm = digits_datamodule(spec.num_train)
    rows = loss_gap_history(digits_dir(args.digits_cache, spec), list(range(0, spec.max_steps + 1, CHECK_EVERY)),
                            lambda s: digits_checkpoint(args.digits_cache, spec, s), dm.unique_train_data(),
                            dm.heldout_data(), selection)
    return [(row["step"], gap_of(row)) for row in rows]


def rule_stop(gaps: list[tuple[int, float]]) -> int | None:
    """Where ``LOSS_GAP_RULE`` fed every check's gap, the step-0 baseline included, stops (``None``: never)."""
    rule = StopRule(LOSS_GAP_RULE)
    return next((step for step, gap in gaps if rule.update(gap)), None)


def _series(gaps: list[tuple[int, float]]) -> str:
    return " ".join(f"{g:.2f}" for _, g in gaps[:9])


def study_loss_gap(args: argparse.Namespace, w: ScaleWriter) -> None:
    """The pre-registered test of ``docs/scale/loss_gap.md`` on the patch runs (a, b) and the digits runs (c), with
    the pre-registered selection of images and, after it, the callback's."""
    big = load_runs(args)
    small = load_runs(argparse.Namespace(**{**vars(args), "runs": args.transfer_runs, "calibrate": [],
                                            "patch_size": args.transfer_patch_size}))
    sets = [("16x16 calibration runs", [r for r in big if r.calibration]),
            ("(a) 16x16 reported runs", [r for r in big if not r.calibration]),
            (f"(b) {args.transfer_patch_size}x{args.transfer_patch_size}x3 patches", small)]
    rows, passed = [], {selection: {} for selection in SELECTIONS}
    for name, runs in sets:
        for run in runs:
            row = [name, run.name]
            for selection in SELECTIONS:
                gaps = patch_gaps(args, run, selection)
                verdict = stop_verdict(run, rule_stop(gaps))
                passed[selection].setdefault(name, []).append("in time" in verdict or verdict.startswith("no stop")
                                                              or (verdict == "never" and run.memorizing))
                row += [verdict, fmt(max(g for _, g in gaps), 3), _series(gaps)]
            rows.append(row)
    rows_c = []
    digits = argparse.Namespace(n=args.digits_n, steps=args.digits_steps, cache=args.digits_cache, jobs=args.jobs)
    for spec, record in zip(digits_specs(digits), digits_runs(digits), strict=True):
        row = [str(record["n"])]
        for selection in SELECTIONS:
            gaps = digits_gaps(args, spec, selection)
            stop = rule_stop(gaps)
            rate, _, r10, verdict = digits_verdict(spec, record, stop)
            passed[selection].setdefault("(c) digits", []).append(verdict in ("in time", "no stop (correct)", "never"))
            row += [fmt(stop), fmt(rate.get(stop), 2), fmt(r10), verdict, fmt(max(g for _, g in gaps), 3),
                    _series(gaps)]
        rows_c.append(row)
    per_selection = ["stop", "max gap", "gap at steps 0, 250, ..., 2000"]
    w.table(f"The loss-gap rule of loss_gap.md (threshold {LOSS_GAP_RULE.threshold}, min_delta "
            f"{LOSS_GAP_RULE.min_delta}, patience {LOSS_GAP_RULE.patience}; calibrated on the 16x16 seed-1 runs) on "
            f"the patch runs, {LOSS_GAP_IMAGES} training + {LOSS_GAP_IMAGES} held-out patches, {NUM_LEVELS} noise "
            "levels: stop step (nn rate there [95% CI] of the measured samples); pre-registered selection (first "
            "rows), then the callback's (seeded random rows)",
            ["runs", "run", *[f"{c} (first)" for c in per_selection], *[f"{c} (random)" for c in per_selection]],
            rows)
    per_selection = ["stop", "nn rate there", "rate first > 10%", "verdict", "max gap", "gap at steps 0, 250, ..."]
    w.table(f"The same rule on the digits runs (ResidualMLP, epsilon prediction), every {CHECK_EVERY} steps; nn "
            "rate of the 64 callback probes; first rows, then random rows",
            ["N", *[f"{c} (first)" for c in per_selection], *[f"{c} (random)" for c in per_selection]], rows_c)
    w.table("Criteria of docs/scale/loss_gap.md (test (d), the app, is run separately): with the pre-registered "
            "selection (the test), and with the callback's (after the test)", ["test", "first rows", "random rows"],
            [[name, *["yes" if all(passed[sel][name]) else "**no**" for sel in SELECTIONS]]
             for name in passed["first"] if not name.startswith("16x16 calibration")])
