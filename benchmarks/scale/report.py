"""Tables and figures of the realistic-scale study, from the cached runs and measurements (``scale/study.py``)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from benchmarks.scale.loss_gap import LOSS_GAP_IMAGES, LOSS_GAP_RULE, patch_gaps, rule_stop
from benchmarks.scale.measure import (
    measure_checkpoint,
    measured_steps,
)
from benchmarks.scale.reference import reference_checkpoint, reference_gap, reference_score
from benchmarks.scale.runs import RunSpec, datamodule, parse_spec, run_dir
from benchmarks.scale.signals import (
    LATE,
    ONSET,
    PER_SAMPLE,
    Series,
    auroc_tpr,
    early_stopping,
    first_step,
    oriented,
    rate_interval,
    stop_step,
    threshold_from,
)
from benchmarks.validation.gap import GAP_IMAGES, GAP_RULE
from benchmarks.validation.report import Writer
from benchmarks.validation.runs import fmt
from memcallback.core.stopping import StopConfig, StopRule
from memcallback.measure.ground_truth import nearest_neighbours
from memcallback.measure.loss_gap import NUM_LEVELS
from memcallback.measure.sharpness import SharpnessConfig
from memcallback.viz.wandb_media import pair_grid, upscale

DIGITS_FLAG_THRESHOLD = SharpnessConfig().flag_threshold  # calibrated on digits (docs/results.md, D3)
SHIPPED = StopConfig(monitor="memorization/score").resolve("memorization/", ())  # calibrated on digits (S1)
MIN_PER_CLASS = 10  # within-checkpoint AUROC only where both classes have at least this many samples
#: distance ratios (nearest / second-nearest training patch) of the samples left out as ambiguous in the label-margin
#: table: the nn rule puts its cut at 1/3 inside this band; chosen once, before the table was first computed
AMBIGUOUS = (0.2, 0.5)


class ScaleWriter(Writer):
    """``Writer`` of ``validation_report`` naming ``scale/study.py`` as the command."""

    def __init__(self, out: Path, study: str) -> None:
        super().__init__(out, study)
        self.command = "python -m benchmarks.scale.study " + " ".join(sys.argv[1:])
        self.lines[0] = f"<!-- written by `{self.command}` -->"


@dataclass
class Run:
    """A trained run, its training record and its measured checkpoints (step order)."""

    spec: RunSpec
    record: dict
    checks: list[dict]
    calibration: bool

    @property
    def memorizing(self) -> bool:
        return self.spec.num_train is not None

    @property
    def name(self) -> str:
        return f"N={self.record['n']} seed {self.spec.seed}"

    @property
    def steps(self) -> list[int]:
        return [c["step"] for c in self.checks]

    def intervals(self) -> list[tuple[float, float, float]]:
        return [rate_interval(c["copied"]) for c in self.checks]

    def onset(self, level: float = ONSET) -> int | None:
        return first_step(self.steps, [lo > level for _, lo, _ in self.intervals()])

    def quick_onset(self, level: float = ONSET) -> int | None:
        """Onset from the training log's quick rate (64 samples every grid step; the interval depends only on
        the count, so the labels are rebuilt from it)."""
        steps, passed = [], []
        for e in self.record["evals"]:
            copies = round(64 * e["quick_nn_rate"])
            steps.append(e["step"])
            passed.append(rate_interval(np.arange(64) < copies)[1] > level)
        return first_step(steps, passed)

    def evals(self) -> dict[int, dict]:
        return {e["step"]: e for e in self.record["evals"]}


def load_runs(args: argparse.Namespace, reference: bool = False) -> list[Run]:
    """Every run with its measured checkpoints (measuring any that are missing), with the sharpness at noised
    training and held-out images of each checkpoint under ``"reference"`` when ``reference``."""
    out = []
    calibrate = {parse_spec(t, args.steps, args.every, args.patch_size).label for t in args.calibrate}
    for text in args.runs:
        spec = parse_spec(text, args.steps, args.every, args.patch_size)
        record = json.loads((run_dir(args.cache, spec) / "run.json").read_text())
        checks = [measure_checkpoint(args.cache, spec, s, args.samples, args.measured, args.sigma)
                  for s in measured_steps(spec, args.measure_every)]
        if reference:
            for c in checks:
                c["reference"] = reference_checkpoint(args.cache, spec, c["step"], args.sigma)
        out.append(Run(spec, record, checks, spec.label in calibrate))
    return out


def series(runs: list[Run]) -> list[Series]:
    """Run-level signals per checkpoint, oriented larger = more memorized (stable rank: sign from calibration)."""
    out = [Series(name, f"mean of {desc}", lambda c, n=name: float(np.mean(oriented(c, n))))
           for name, (_, _, desc) in PER_SAMPLE.items()]
    out.insert(1, Series("flagged_fraction", f"+fraction with score > {DIGITS_FLAG_THRESHOLD}",
                         lambda c: float(np.mean(c["per_sample"]["flagged"]))))
    if all("reference" in c for r in runs for c in r.checks):
        out += [Series("probes_minus_heldout", "+score(probes) - score(noised held-out images)",
                       lambda c: float(np.mean(c["per_sample"]["score"]) - reference_score(c["reference"], "val"))),
                Series("sharpness_gap", "+score(noised training images) - score(noised held-out images), "
                       f"{GAP_IMAGES} of each, top_mu k=8 (the patch experiments' sharpness_gap)",
                       lambda c: reference_gap(c["reference"]))]
    if all("loss_gap" in c for r in runs for c in r.checks):
        out.append(Series("loss_gap", f"+relative loss gap, {LOSS_GAP_IMAGES} training + {LOSS_GAP_IMAGES} held-out "
                          f"images (random rows, as the callback), {NUM_LEVELS} noise levels", lambda c: c["loss_gap"]))
    sign = _stable_rank_sign(runs)
    out.append(Series("stable_rank", f"{'+' if sign > 0 else '-'}mean stable rank ||W||_F^2/||W||_2^2 (sign from "
                      "the calibration runs)", lambda c: sign * c["stable_rank"]))
    return out


def _gap_series(run: Run) -> list[float]:
    evals = run.evals()
    return [evals[s]["val_loss"] - evals[s]["train_loss"] for s in run.steps]


def _stable_rank_sign(runs: list[Run]) -> float:
    """+1 when the memorizing calibration run's stable rank at its onset exceeds the generalizing one's."""
    mem = next(r for r in runs if r.calibration and r.memorizing)
    gen = next(r for r in runs if r.calibration and not r.memorizing)
    step = mem.onset() or mem.steps[-1]
    value = {r.spec.label: next(c["stable_rank"] for c in r.checks if c["step"] == step) for r in (mem, gen)}
    return 1.0 if value[mem.spec.label] > value[gen.spec.label] else -1.0


# --------------------------------------------------------------------------------------------------
# curves
# --------------------------------------------------------------------------------------------------
def study_curves(args: argparse.Namespace, w: ScaleWriter) -> None:
    """nn rate with its bootstrap band, onset per run and vs N, every signal over training (table + figure)."""
    runs = load_runs(args, reference=True)
    rows = []
    for run in runs:
        iv = run.intervals()
        r, lo, hi = iv[-1]
        rows.append([run.name, "calibration" if run.calibration else "reported", fmt(run.onset()),
                     fmt(run.onset(LATE)), fmt(run.quick_onset()), f"{r:.2f} [{lo:.2f}, {hi:.2f}]",
                     fmt(max(x[0] for x in iv), 2)])
    w.table(f"Memorization onset: first checkpoint whose 95% bootstrap lower bound ({args.samples} DDIM-50 samples, "
            f"probe seed 1, ratio < 1/3) passes {ONSET:.0%} / {LATE:.0%}",
            ["run", "role", f"onset (lower > {ONSET:.0%})", f"lower > {LATE:.0%}",
             f"onset on the training log (64 samples every {args.every} steps)", "final nn rate [95% CI]",
             "max nn rate"], rows)
    by_n: dict[int, list[Run]] = {}
    for run in runs:
        if run.memorizing:
            by_n.setdefault(run.record["n"], []).append(run)
    rows = []
    for n, group in sorted(by_n.items()):
        onsets = [r.onset() for r in group]
        quick = [r.quick_onset() for r in group]
        known = [o for o in quick if o is not None]
        rows.append([str(n), ", ".join(fmt(o) for o in onsets), ", ".join(fmt(o) for o in quick),
                     fmt(float(np.mean(known)) / n, 1) if known else "-"])
    w.table("Onset against N (seeds in run order; a dash: no onset within the run)",
            ["N", f"onset, measured every {args.measure_every} steps", f"onset, training log every {args.every} steps",
             "mean training-log onset / N (steps per training patch)"], rows)
    sig = series(runs)
    for run in runs:
        iv = run.intervals()
        gap = _gap_series(run)
        body = [[str(s), f"{r:.2f} [{lo:.2f}, {hi:.2f}]", *[fmt(x.value(c), 3) for x in sig], fmt(c["val_loss"], 4),
                 fmt(g, 4)] for s, (r, lo, hi), c, g in zip(run.steps, iv, run.checks, gap, strict=True)]
        w.table(f"{run.name}: every signal per checkpoint (oriented: larger = more memorized; {args.measured} "
                "probes measured)", ["step", "nn rate [95% CI]", *[x.name for x in sig], "val loss", "val - train"],
                body)
    _curves_figure(runs, sig, w)


def _curves_figure(runs: list[Run], sig: list[Series], w: ScaleWriter) -> None:
    panels = ["nn rate", *[x.name for x in sig], "val loss", "val - train loss"]
    cols = 4
    fig = Figure(figsize=(4 * cols, 3 * -(-len(panels) // cols)), layout="constrained")
    axes = fig.subplots(-(-len(panels) // cols), cols).flatten()
    for i, run in enumerate(runs):
        style = dict(color=f"C{i}", ls=":" if run.calibration else "-", label=run.name)
        iv = np.array(run.intervals())
        axes[0].plot(run.steps, iv[:, 0], **style)
        axes[0].fill_between(run.steps, iv[:, 1], iv[:, 2], color=f"C{i}", alpha=0.2)
        for ax, x in zip(axes[1:], sig, strict=False):
            ax.plot(run.steps, [x.value(c) for c in run.checks], **style)
        axes[len(sig) + 1].plot(run.steps, [c["val_loss"] for c in run.checks], **style)
        axes[len(sig) + 2].plot(run.steps, _gap_series(run), **style)
    for ax, title in zip(axes, panels, strict=False):
        ax.set(title=title, xlabel="training step")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    axes[0].axhline(ONSET, color="0.6", lw=0.8, ls="--")
    axes[0].legend(fontsize=7)
    fig.suptitle("Nearest-neighbour rate (95% bootstrap band) and every signal over training "
                 "(oriented: up = more memorized; dotted: calibration runs)")
    w.figure(fig, "curves.png")


# --------------------------------------------------------------------------------------------------
# detect
# --------------------------------------------------------------------------------------------------
def study_detect(args: argparse.Namespace, w: ScaleWriter) -> None:
    """Per-sample AUROC and TPR@1%FPR per signal against the nn label, pooled per run and within checkpoints."""
    runs = [r for r in load_runs(args) if r.memorizing]
    w.text("Orientation (larger = more memorized, fixed before looking): "
           + "; ".join(f"`{n}`: {d}" for n, (_, _, d) in PER_SAMPLE.items()) + ".\n")
    rows = []
    for run in runs:
        checks = [c for c in run.checks if c["step"] > 0]
        labels = np.concatenate([c["copied"][: args.measured] for c in checks])
        row = [run.name, f"{labels.sum()}/{(~labels).sum()}"]
        for name in PER_SAMPLE:
            auc, tpr = auroc_tpr(labels, np.concatenate([oriented(c, name) for c in checks]))
            row.append(f"{fmt(auc)} / {fmt(tpr, 2)}")
        rows.append(row)
    w.table("Per-sample detection pooled over the checkpoints of each run (step > 0): AUROC / TPR@1%FPR",
            ["run", "copies / not", *PER_SAMPLE], rows)
    rows, within = [], {name: [] for name in PER_SAMPLE}
    for run in runs:
        for c in run.checks:
            labels = c["copied"][: args.measured]
            if min(labels.sum(), (~labels).sum()) < MIN_PER_CLASS:
                continue
            results = {n: auroc_tpr(labels, oriented(c, n)) for n in PER_SAMPLE}
            for n, value in results.items():
                within[n].append((*value, run.calibration))
            cells = [f"{fmt(a)} / {fmt(t, 2)}" for a, t in results.values()]
            rows.append([run.name, str(c["step"]), f"{labels.sum()}/{(~labels).sum()}", *cells])
    for which, keep in (("every run", lambda cal: True), ("the reported runs only", lambda cal: not cal)):
        summary = []
        for n, values in within.items():
            v = [(a, t) for a, t, cal in values if keep(cal)]
            if v:
                summary.append([n, str(len(v)), fmt(float(np.median([a for a, _ in v])), 3),
                                fmt(min(a for a, _ in v), 3), fmt(float(np.median([t for _, t in v])), 2),
                                str(sum(a >= 0.95 for a, _ in v)), str(sum(a >= 0.95 and t >= 0.5 for a, t in v))])
        w.table(f"Within-checkpoint summary over every checkpoint of {which} with >= {MIN_PER_CLASS} per class "
                "(targets: AUROC >= 0.95 and TPR@1%FPR >= 0.5 on each; with fewer than 100 negatives, 1% FPR means "
                "no false positive)", ["signal", "checkpoints", "median AUROC", "min AUROC", "median TPR@1%FPR",
                                       "AUROC >= 0.95", "AUROC >= 0.95 and TPR >= 0.5"], summary)
    w.table(f"Within each checkpoint with >= {MIN_PER_CLASS} samples per class: AUROC / TPR@1%FPR",
            ["run", "step", "copies / not", *PER_SAMPLE], rows or [["(none)"] + [""] * (2 + len(PER_SAMPLE))])
    _label_margin(runs, args, w)
    _roc_figure(runs, args, w)
    _grid_figure(runs, args, w)


def _label_margin(runs: list[Run], args: argparse.Namespace, w: ScaleWriter) -> None:
    """What limits the within-checkpoint numbers: the default score against the nn label on every sample, and
    on the unambiguous ones only (distance ratio outside ``AMBIGUOUS``), reported runs."""
    low, high = AMBIGUOUS
    rows = []
    for name, keep in (("every sample (the target's label)", lambda r: np.ones_like(r, dtype=bool)),
                       (f"unambiguous only: ratio < {low} (copies) or > {high} (novel)",
                        lambda r: (r < low) | (r > high))):
        values, ambiguous = [], []
        for run in (r for r in runs if not r.calibration):
            for c in run.checks:
                ratio = np.asarray(c["distance_ratio"][: args.measured])
                labels, score = c["copied"][: args.measured], oriented(c, "score")
                mask = keep(ratio)
                if min(labels[mask].sum(), (~labels[mask]).sum()) < MIN_PER_CLASS:
                    continue
                values.append(auroc_tpr(labels[mask], score[mask]))
                ambiguous.append(float(((ratio >= low) & (ratio <= high)).mean()))
        rows.append([name, str(len(values)), fmt(float(np.median([a for a, _ in values])), 3),
                     fmt(min(a for a, _ in values), 3), fmt(float(np.median([t for _, t in values])), 2),
                     str(sum(a >= 0.95 for a, _ in values)), str(sum(a >= 0.95 and t >= 0.5 for a, t in values)),
                     fmt(float(np.median(ambiguous)), 2)])
    w.table(f"What limits the within-checkpoint numbers: the default score on the reported runs' checkpoints with >= "
            f"{MIN_PER_CLASS} per class, against every sample's nn label and against the unambiguous samples only "
            f"(distance ratio outside [{low}, {high}], around the rule's cut at 1/3)",
            ["samples", "checkpoints", "median AUROC", "min AUROC", "median TPR@1%FPR", "AUROC >= 0.95",
             "AUROC >= 0.95 and TPR >= 0.5", "median share of ambiguous samples"], rows)


def _roc_figure(runs: list[Run], args: argparse.Namespace, w: ScaleWriter) -> None:
    from sklearn.metrics import roc_curve

    fig = Figure(figsize=(4.5 * len(runs), 4.2), layout="constrained")
    for ax, run in zip(np.atleast_1d(fig.subplots(1, len(runs))), runs, strict=True):
        checks = [c for c in run.checks if c["step"] > 0]
        labels = np.concatenate([c["copied"][: args.measured] for c in checks])
        if labels.all() or not labels.any():
            continue
        for i, name in enumerate(PER_SAMPLE):
            fpr, tpr, _ = roc_curve(labels, np.concatenate([oriented(c, name) for c in checks]))
            ax.plot(fpr, tpr, color=f"C{i}", lw=2 if name == "score" else 1, label=name)
        ax.plot([0, 1], [0, 1], color="0.7", lw=0.8)
        ax.set(title=f"{run.name} ({labels.sum()} copies / {(~labels).sum()})", xlabel="false positive rate",
               ylabel="true positive rate")
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("ROC of every per-sample signal against the nearest-neighbour label (pooled over checkpoints)")
    w.figure(fig, "roc.png")


def _grid_figure(runs: list[Run], args: argparse.Namespace, w: ScaleWriter) -> None:
    """The most memorized probes (highest score) of each reported memorizing run's last checkpoint, each above
    its nearest training patch: the grid the W&B media show (``pair_grid``)."""
    shown = [r for r in runs if not r.calibration]
    fig = Figure(figsize=(7 * len(shown), 4.2), layout="constrained")
    for ax, run in zip(np.atleast_1d(fig.subplots(1, len(shown))), shown, strict=True):
        c = run.checks[-1]
        score = torch.from_numpy(np.asarray(c["per_sample"]["score"], dtype=np.float64))
        top = score.argsort(descending=True, stable=True)[:16]
        samples = torch.from_numpy(c["samples"])[top]
        train_x = datamodule(run.spec).unique_train_data()
        _, index = nearest_neighbours(samples, train_x, k=1)
        ax.imshow(pair_grid(upscale(samples), upscale(train_x[index[:, 0]])))
        ax.set_axis_off()
        copied = c["copied"][: args.measured][top.numpy()]
        ax.set_title(f"{run.name}, step {c['step']}: top-16 score ({score[top].min():.2f}-{score[top].max():.2f}), "
                     f"{copied.sum()}/16 copies by the nn rule", fontsize=9)
    fig.suptitle("Most memorized probes (rows 1, 3) above their nearest training patch (rows 2, 4)")
    w.figure(fig, "most_memorized.png")


# --------------------------------------------------------------------------------------------------
# stopping
# --------------------------------------------------------------------------------------------------
def study_stopping(args: argparse.Namespace, w: ScaleWriter) -> None:
    """Stop step of every signal, thresholds calibrated on the calibration runs; flag-threshold transfer."""
    runs = load_runs(args, reference=True)
    for run in runs:  # the callback's loss gap at every check
        gaps = dict(patch_gaps(args.cache, run.spec, run.steps, "random"))
        for c in run.checks:
            c["loss_gap"] = gaps[c["step"]]
    cal_mem = next(r for r in runs if r.calibration and r.memorizing)
    cal_gen = next(r for r in runs if r.calibration and not r.memorizing)
    reported = [r for r in runs if not r.calibration]
    onset = cal_mem.onset()
    w.text(f"Calibration runs: {cal_mem.name} (onset {onset}) and {cal_gen.name}; reported: "
           + ", ".join(r.name for r in reported) + ". Checks at step > 0 only (the callback's first check "
           f"comes after {args.measure_every} steps). Threshold = midpoint between the generalizing calibration "
           "run's maximum and the memorizing calibration run's value at its onset when the latter is larger "
           "(`separates`), else the generalizing maximum.\n")
    rules = {}
    for x in [*series(runs), Series("val_minus_train", "+(val loss - train loss)", lambda c: 0.0)]:
        values = {r.spec.label: _values(r, x) for r in runs}
        cal_steps = [s for s in cal_mem.steps if s > 0]
        mem = [(s, v, s == onset) for s, v in zip(cal_steps, values[cal_mem.spec.label], strict=True)]
        threshold, separates = threshold_from(mem, values[cal_gen.spec.label])
        rules[x.name] = (x, threshold, separates, values)
    rows, summary = [], {}
    for name, (_, threshold, separates, values) in rules.items():
        stops = {r.spec.label: stop_step([s for s in r.steps if s > 0], values[r.spec.label], threshold)
                 for r in reported}
        summary[name] = stops
        rows.append([name, fmt(threshold, 4), "yes" if separates else "no",
                     *[_stop_cell(r, stops[r.spec.label]) for r in reported]])
    shipped = {r.spec.label: _shipped_stop(r) for r in reported}
    summary["score (shipped rule)"] = shipped
    rows.append([f"score, shipped StopRule (threshold {SHIPPED.threshold}, min_delta {SHIPPED.min_delta}, patience "
                 f"{SHIPPED.patience}; digits-calibrated)", str(SHIPPED.threshold),
                 "-", *[_stop_cell(r, shipped[r.spec.label]) for r in reported]])
    if "sharpness_gap" in rules:
        gap = {r.spec.label: gap_rule_stop(r) for r in reported}
        summary["sharpness_gap (rule)"] = gap
        rows.append([f"sharpness_gap, the rule of reference.md (threshold {GAP_RULE.threshold}, min_delta "
                     f"{GAP_RULE.min_delta}, patience {GAP_RULE.patience}; calibrated on the seed-1 runs)",
                     str(GAP_RULE.threshold), "-", *[_stop_cell(r, gap[r.spec.label]) for r in reported]])
    # fed from step 0, the callback's baseline check, as in loss_gap.md
    loss_rule = {r.spec.label: rule_stop(patch_gaps(args.cache, r.spec, [0, *r.steps], "random")) for r in reported}
    summary["loss_gap (rule)"] = loss_rule
    rows.append([f"loss_gap, the rule of loss_gap.md (threshold {LOSS_GAP_RULE.threshold}, min_delta "
                 f"{LOSS_GAP_RULE.min_delta}, patience {LOSS_GAP_RULE.patience}; calibrated on the seed-1 runs, "
                 "first rows; from step 0)", str(LOSS_GAP_RULE.threshold), "-",
                 *[_stop_cell(r, loss_rule[r.spec.label]) for r in reported]])
    es = {r.spec.label: early_stopping(list(r.evals()), [e["val_loss"] for e in r.evals().values()])
          for r in reported}
    summary["val loss EarlyStopping"] = es
    rows.append([f"val loss, EarlyStopping(patience=3) on every {args.every}-step evaluation", "-", "-",
                 *[_stop_cell(r, es[r.spec.label]) for r in reported]])
    w.table("Where each signal stops each reported run: stop step (nn rate there [95% CI]; percentage points "
            "prevented = final rate - rate at stop). Generalizing runs: any stop is a false stop",
            ["signal", "threshold", "separates on calibration", *[r.name for r in reported]], rows)
    _comparison(reported, summary, w)
    _flag_transfer(runs, args, w)


def _values(run: Run, x: Series) -> list[float]:
    if x.name == "val_minus_train":
        return [g for s, g in zip(run.steps, _gap_series(run), strict=True) if s > 0]
    return [x.value(c) for c in run.checks if c["step"] > 0]


def _rule_stop(config: StopConfig, run: Run, value: Callable[[dict], float]) -> int | None:
    """Where a ``StopRule(config)`` fed ``value(check)`` at every check after step 0 stops ``run`` (``None``: never)."""
    rule = StopRule(config)
    return next((c["step"] for c in run.checks if c["step"] > 0 and rule.update(value(c))), None)


def _shipped_stop(run: Run) -> int | None:
    return _rule_stop(SHIPPED, run, lambda c: float(np.mean(c["per_sample"]["score"])))


def gap_rule_stop(run: Run) -> int | None:
    """Where ``GAP_RULE`` (the pre-registered sharpness-gap rule) stops ``run`` (``None``: never)."""
    return _rule_stop(GAP_RULE, run, lambda c: reference_gap(c["reference"]))


def _rate_at(run: Run, step: int) -> tuple[float, float, float]:
    if step in run.steps:
        return run.intervals()[run.steps.index(step)]
    nearest = max(s for s in run.steps if s <= step)  # val-loss stops can fall between measured checkpoints
    return run.intervals()[run.steps.index(nearest)]


def _stop_cell(run: Run, step: int | None) -> str:
    if step is None:
        return "never"
    if not run.memorizing:
        return f"**FALSE STOP at {step}**"
    r, lo, hi = _rate_at(run, step)
    prevented = run.intervals()[-1][0] - r
    late = run.onset(LATE)
    verdict = "in time" if late is None or step < late else "late"
    return f"{step} ({r:.2f} [{lo:.2f}, {hi:.2f}]; {100 * prevented:.0f} pp; {verdict})"


def _comparison(reported: list[Run], summary: dict[str, dict], w: ScaleWriter) -> None:
    ref = summary["score"]
    rows = []
    for name, stops in summary.items():
        cells = []
        for run in reported:
            s, r0 = stops[run.spec.label], ref[run.spec.label]
            if not run.memorizing:
                cells.append("false stop" if s is not None else "no stop (correct)")
            elif s is None:
                cells.append("never")
            elif r0 is None:
                cells.append(f"stops at {s}, score never")
            else:
                cells.append("same" if s == r0 else ("earlier" if s < r0 else "later") + f" ({s - r0:+d})")
        rows.append([name, *cells])
    w.table("Against the default score with its calibrated threshold (steps relative to its stop); cost per check "
            "in `cost.md`", ["signal", *[r.name for r in reported]], rows)


def _flag_transfer(runs: list[Run], args: argparse.Namespace, w: ScaleWriter) -> None:
    """Does flag_threshold=0.39 (digits) transfer? Rate matching on the calibration runs, error on the others."""
    grid = np.round(np.arange(0.0, 1.0001, 0.01), 2)

    def error(rs: list[Run], thr: float) -> float:
        return float(np.mean([abs((c["per_sample"]["score"] > thr).mean() - c["copied"][: args.measured].mean())
                              for r in rs for c in r.checks if c["step"] > 0]))

    cal = [r for r in runs if r.calibration]
    rep = [r for r in runs if not r.calibration]
    matched = float(grid[np.argmin([error(cal, t) for t in grid])])
    rows = [[fmt(t, 2), rule, fmt(error(cal, t), 3), fmt(error(rep, t), 3)]
            for t, rule in ((DIGITS_FLAG_THRESHOLD, "digits rate matching (shipped default)"),
                            (matched, "rate matching on the calibration runs"))]
    w.table("Flag threshold transfer: mean |flagged fraction - nn rate| over checkpoints (step > 0; digits: 0.026 at "
            "0.39)", ["flag_threshold", "rule", "calibration runs", "reported runs"], rows)
    body = []
    for r in rep:
        for c in r.checks:
            if c["step"] > 0:
                s = c["per_sample"]["score"]
                body.append([r.name, str(c["step"]), fmt(c["copied"][: args.measured].mean(), 2),
                             fmt((s > DIGITS_FLAG_THRESHOLD).mean(), 2), fmt((s > matched).mean(), 2),
                             fmt(float(np.median(s)), 3), fmt(float(s.max()), 3)])
    w.table("Flagged fraction against the nn rate on the reported runs",
            ["run", "step", "nn rate", f"score > {DIGITS_FLAG_THRESHOLD}", f"score > {matched}", "median score",
             "max score"], body)
