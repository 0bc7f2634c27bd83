"""Do thresholds transfer across data sets? Two pre-registered tests: ``docs/scale/normalization.md`` (the top_mu
score times ``sqrt(d / 64)`` with the digits thresholds, fitted on digits (d = 64) and the 16x16 patch calibration
runs (d = 768), tested on 8x8x3 patches (d = 192)) and ``docs/scale/loss_gap.md`` (the relative loss gap's stop
rule, calibrated on the 16x16 seed-1 runs, tested on the other 16x16 runs, 8x8x3 patches and digits)."""

from __future__ import annotations

import argparse
import math

import numpy as np

from benchmarks.scale.loss_gap import LOSS_GAP_IMAGES, LOSS_GAP_RULE, SELECTIONS, digits_gaps, patch_gaps, rule_stop
from benchmarks.scale.measure import top_mu_score
from benchmarks.scale.reference import reference_gap
from benchmarks.scale.report import Run, ScaleWriter, gap_rule_stop, load_runs
from benchmarks.scale.signals import LATE
from benchmarks.validation.gap import stop_verdict as digits_verdict
from benchmarks.validation.report import runs as digits_runs
from benchmarks.validation.report import specs as digits_specs
from benchmarks.validation.runs import CHECK_EVERY, fmt
from memcallback.core.stopping import StopConfig, StopRule
from memcallback.measure.loss_gap import NUM_LEVELS

REFERENCE_DIM = 64  # the digits' dimension, where flag_threshold and the stop threshold were calibrated
DIGITS_FLAG = 0.39  # docs/results.md D3 (rate matching on digits)
GRID = np.round(np.arange(0.0, 1.0001, 0.01), 2)
# the pre-registered pass criteria (docs/scale/normalization.md)
MATCHED_RANGE = (0.17, 0.28)
MAX_FLAG_ERROR = 0.05
MAX_GENERALIZING_FLAGGED = 0.05


def raw_score(check: dict) -> np.ndarray:
    """The unscaled top_mu score of every measured probe of one checkpoint."""
    return top_mu_score(check["mu"])


def dimension(check: dict) -> int:
    return int(check["samples"][0].size)


def normalized_score(check: dict) -> np.ndarray:
    """The raw score times ``sqrt(d / REFERENCE_DIM)``, clipped to ``[0, 1]``."""
    return np.clip(raw_score(check) * math.sqrt(dimension(check) / REFERENCE_DIM), 0.0, 1.0)


def _checks(runs: list[Run]) -> list[dict]:
    return [c for r in runs for c in r.checks if c["step"] > 0]


def flag_error(runs: list[Run], threshold: float, measured: int) -> float:
    """Mean over checkpoints of ``|fraction of raw scores > threshold - nn rate of the measured probes|``."""
    return float(np.mean([abs((raw_score(c) > threshold).mean() - c["copied"][:measured].mean())
                          for c in _checks(runs)]))


def rate_matched(runs: list[Run], measured: int) -> float:
    """The raw-score threshold (0.01 grid) with the smallest :func:`flag_error` on ``runs``."""
    return float(GRID[np.argmin([flag_error(runs, t, measured) for t in GRID])])


def stop_rule_step(run: Run) -> int | None:
    """The shipped ``StopRule(StopConfig())`` replayed on the probe mean of the normalized score."""
    rule = StopRule(StopConfig())
    return next((c["step"] for c in run.checks if c["step"] > 0 and rule.update(float(normalized_score(c).mean()))),
                None)


def stop_verdict(run: Run, step: int | None) -> str:
    """``in time`` / ``late`` (at or after the 10% lower-bound step) / ``never`` / ``false stop`` / ``no stop``."""
    if not run.memorizing:
        return "no stop (correct)" if step is None else f"FALSE STOP at {step}"
    late = run.onset(LATE)
    if step is None:
        return "never" + ("" if late is None else f" (10% passed at {late})")
    rate, lo, hi = run.intervals()[run.steps.index(step)]
    timing = "in time" if late is None or step < late else "late"
    return f"{step} ({fmt(rate, 2)} [{fmt(lo, 2)}, {fmt(hi, 2)}]; {timing}; 10% passed at {late or '-'})"


def study_transfer(args: argparse.Namespace, w: ScaleWriter) -> None:
    """Rate-matched flag thresholds per dimension against the sqrt(d / 64) prediction, and the shipped stop rule
    on the normalized score, for the 16x16 runs (fitted) and the 8x8 runs (the test)."""
    big = load_runs(args)
    small = load_runs(argparse.Namespace(**{**vars(args), "runs": args.transfer_runs, "calibrate": [],
                                            "patch_size": args.transfer_patch_size}), reference=True)
    sets = [("16x16 calibration runs (fitted)", [r for r in big if r.calibration]),
            ("16x16 reported runs", [r for r in big if not r.calibration]),
            (f"{args.transfer_patch_size}x{args.transfer_patch_size} runs (the test)", small)]
    rows = [["8x8 digits (docs/results.md D3; the reference)", "64", fmt(DIGITS_FLAG, 3), "-", fmt(DIGITS_FLAG, 2),
             "0.026", "-", "0.000"]]
    verdicts = {}
    for name, runs in sets:
        memorizing = [r for r in runs if r.memorizing]
        generalizing = [r for r in runs if not r.memorizing]
        d = dimension(runs[0].checks[0])
        predicted = DIGITS_FLAG * math.sqrt(REFERENCE_DIM / d)
        matched = rate_matched(memorizing, args.measured)
        error = flag_error(memorizing, predicted, args.measured)
        gen_flagged = max((float((raw_score(c) > predicted).mean()) for c in _checks(generalizing)), default=0.0)
        rows.append([name, str(d), fmt(predicted, 3), ", ".join(r.name for r in memorizing), fmt(matched, 2),
                     fmt(error, 3), fmt(flag_error(memorizing, matched, args.measured), 3), fmt(gen_flagged, 3)])
        verdicts[name] = (predicted, matched, error, gen_flagged)
    w.table("Flag threshold per data dimension: predicted = 0.39 sqrt(64 / d) on the raw top_mu score; rate "
            "matching on the memorizing runs (0.01 grid); mean |flagged fraction - nn rate| over their checkpoints",
            ["runs", "d", "predicted threshold", "memorizing runs", "rate-matched threshold",
             "error at predicted", "error at rate-matched", "max flagged on generalizing at predicted"], rows)

    rows = []
    for name, runs in sets:
        for run in runs:
            rows.append([name, run.name, stop_verdict(run, stop_rule_step(run))])
    w.table("The shipped StopRule (threshold 0.1, min_delta 0.05, patience 1) on the normalized score "
            "(probe mean of clip(sqrt(d / 64) raw, 0, 1)): stop step (nn rate there [95% CI])",
            ["runs", "run", "stop"], rows)

    name, runs = sets[-1]
    predicted, matched, error, gen_flagged = verdicts[name]
    stops = {r.name: stop_verdict(r, stop_rule_step(r)) for r in runs}
    checks = [
        (f"1. rate-matched threshold in [{MATCHED_RANGE[0]}, {MATCHED_RANGE[1]}]", f"{matched:.2f}",
         MATCHED_RANGE[0] <= matched <= MATCHED_RANGE[1]),
        (f"2a. mean |flagged - nn rate| at {predicted:.3f} <= {MAX_FLAG_ERROR}", f"{error:.3f}",
         error <= MAX_FLAG_ERROR),
        (f"2b. generalizing run flags <= {MAX_GENERALIZING_FLAGGED:.0%} at every checkpoint", f"max {gen_flagged:.3f}",
         gen_flagged <= MAX_GENERALIZING_FLAGGED),
        ("3. stop rule in time on every memorizing run, never on the generalizing one", "; ".join(
            f"{k}: {v}" for k, v in stops.items()),
         all(("in time" in v) if r.memorizing else v.startswith("no stop") for r, v in zip(runs, stops.values(),
                                                                                           strict=True))),
    ]
    w.table(f"Pre-registered criteria on the {name}", ["criterion", "measured", "holds"],
            [[c, m, "yes" if ok else "**no**"] for c, m, ok in checks])
    w.text(f"Hypothesis {'holds' if all(ok for *_, ok in checks) else 'fails'} on the test runs.")
    w.table(f"The sharpness-gap rule of reference.md (calibrated on the 16x16 seed-1 runs) on the {name}: stop step "
            "(nn rate there [95% CI])", ["run", "stop", "max gap"],
            [[r.name, stop_verdict(r, gap_rule_stop(r)),
              fmt(max(reference_gap(c["reference"]) for c in r.checks), 4)] for r in runs])


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
                gaps = patch_gaps(args.cache, run.spec, [0, *run.steps], selection)
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
            gaps = digits_gaps(args.digits_cache, spec, selection)
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
