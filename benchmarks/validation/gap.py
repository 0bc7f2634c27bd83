"""The sharpness gap on the digits runs: the stop rule of ``docs/scale/reference.md`` (calibrated on the 16x16
patch runs, not on digits) replayed on every 250-step checkpoint, against the nearest-neighbour rate."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmarks.validation.report import Writer, runs, specs
from benchmarks.validation.runs import CHECK_EVERY, RunSpec, checkpoint, datamodule, first_step, fmt, run_dir
from memcallback.core import ProbeConfig, StopConfig, StopRule
from memcallback.measure import SharpnessConfig, sharpness_gap

#: the rule under test, calibrated on the 16x16 patch study's seed-1 runs (docs/scale/reference.md)
GAP_RULE = StopConfig(monitor="memorization/sharpness_gap", threshold=0.025, min_delta=0.0, patience=1)
#: the score whose gap the rule was calibrated on: the defaults of the time (top_mu, k=8, Krylov budget 46)
GAP_SHARPNESS = SharpnessConfig(k=8, krylov_steps=46, score_statistic="top_mu", flag_threshold=0.39)
#: training and held-out images of each kind (``ProbeConfig.reference_images`` of the patch experiments)
GAP_IMAGES = 16


def gap_history(cache: Path, spec: RunSpec, sigma: float) -> list[tuple[int, float]]:
    """``(step, sharpness gap)`` at every checkpoint, as the callback with ``reference_images=GAP_IMAGES`` and the
    ``GAP_SHARPNESS`` score measures it (training images cycled, the first held-out images, probe seed 0);
    cached in the run folder."""
    path = run_dir(cache, spec) / f"gap_sigma{sigma:g}.json"
    if path.exists():
        return [tuple(row) for row in json.loads(path.read_text())]
    torch.set_num_threads(1)
    dm = datamodule(spec.num_train)
    train, heldout = dm.unique_train_data(), dm.heldout_data()
    n = GAP_IMAGES
    out = []
    for step in range(0, spec.max_steps + 1, CHECK_EVERY):
        module = checkpoint(cache, spec, step)
        t = module.schedule.timestep_for_sigma(sigma)
        result = sharpness_gap(module, train[torch.arange(n) % len(train)], heldout[:n], t, GAP_SHARPNESS,
                               seed=ProbeConfig().seed)
        out.append((step, result.gap))
    path.write_text(json.dumps(out))
    return out


def stop_verdict(spec: RunSpec, record: dict, stop: int | None) -> tuple[dict[int, float], int | None, int | None, str]:
    """A stop step judged against the 64 callback probes' nn rate of a digits run: ``(rate per step, first step
    above 5%, first step above 10%, verdict)``; any stop of the N=all run is false, a memorizing run must be stopped
    before its rate passes 10%."""
    rate = {int(h["step"]): h["nn_rate"] for h in record["history"]}
    steps = sorted(rate)
    r5 = first_step(steps, [rate[s] for s in steps], 0.05)
    r10 = first_step(steps, [rate[s] for s in steps], 0.10)
    if spec.num_train is None:
        verdict = "no stop (correct)" if stop is None else f"FALSE STOP at {stop}"
    elif stop is None:
        verdict = "never" + ("" if r10 is None else " (late)")
    else:
        verdict = "in time" if r10 is None or stop < r10 else "late"
    return rate, r5, r10, verdict


def study_gap(args: argparse.Namespace, w: Writer) -> None:
    """Where the gap rule stops each digits run, against the 64 callback probes' nn rate."""
    rows = []
    for spec, rec in zip(specs(args), runs(args), strict=True):
        gaps = gap_history(args.cache, spec, args.sigma)
        rule = StopRule(GAP_RULE)
        stop = next((step for step, gap in gaps if rule.update(gap)), None)
        rate, r5, r10, verdict = stop_verdict(spec, rec, stop)
        rows.append([str(rec["n"]), fmt(stop), fmt(rate.get(stop), 2), fmt(r5), fmt(r10), verdict,
                     fmt(max(g for _, g in gaps), 4), " ".join(f"{g:.3f}" for _, g in gaps[:9])])
    w.table(f"The sharpness-gap stop rule (threshold {GAP_RULE.threshold}, min_delta {GAP_RULE.min_delta}, patience "
            f"{GAP_RULE.patience}; calibrated on 16x16 patches, not on digits) on every {CHECK_EVERY}-step checkpoint "
            f"at sigma={args.sigma}, {GAP_IMAGES} training + {GAP_IMAGES} "
            "held-out digits; nn rate of the 64 callback probes",
            ["N", "gap stop", "nn rate there", "rate first > 5%", "rate first > 10%", "verdict", "max gap",
             "gap at steps 0, 250, ..., 2000"], rows)
