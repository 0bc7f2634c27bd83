"""Studies over training: the score and nearest-neighbour rate per check (``curves``) and where the
callback's stop rule fires against the memorization rate, the validation-loss rule and a fixed budget
(``stopping``), with sample quality at each stop."""

from __future__ import annotations

import argparse

from matplotlib.figure import Figure
from scipy.stats import spearmanr

from benchmarks.validation.report import Writer, runs, specs, timestep_key
from benchmarks.validation.runs import (
    CHECK_EVERY,
    CURVE_SIGMAS,
    FrechetPCA,
    checkpoint,
    datamodule,
    first_step,
    fmt,
    generate,
    heldout_loss,
    history,
)
from memcallback.core import StopConfig, StopRule
from memcallback.measure import SharpnessConfig

SCORE_RULE = StopConfig(monitor="memorization/score").resolve("memorization/", ())  # calibrated on digits
DEFAULT_RULE = {name: getattr(SCORE_RULE, name) for name in ("threshold", "min_delta", "patience")}
SCORE = f"{SharpnessConfig().score_statistic} score"


def study_curves(args: argparse.Namespace, w: Writer) -> None:
    """Score and nn rate over training per N; Spearman correlation; how early the score rises."""
    records = [{**rec, "history": history(args.cache, spec, rec, args.k)} for spec, rec in zip(specs(args), runs(args),
                                                                                            strict=True)]
    fig = Figure(figsize=(13, 4))
    axes = fig.subplots(1, len(CURVE_SIGMAS), sharey=True)
    rows = []
    for ax, sigma in zip(axes, CURVE_SIGMAS, strict=True):
        key = timestep_key(sigma)
        pooled_score, pooled_rate = [], []
        for i, rec in enumerate(records):
            steps = [int(h["step"]) for h in rec["history"]]
            score = [h[f"{key}/score"] for h in rec["history"]]
            rate = [h["nn_rate"] for h in rec["history"]]
            ax.plot(steps, score, "-", color=f"C{i}", label=f"N={rec['n']} score")
            ax.plot(steps, rate, "--", color=f"C{i}", label=f"N={rec['n']} nn rate")
            pooled_score += score
            pooled_rate += rate
            rho = spearmanr(score, rate).statistic if len(set(rate)) > 1 else float("nan")
            s_up = first_step(steps, score, DEFAULT_RULE["threshold"])
            r5, r10 = first_step(steps, rate, 0.05), first_step(steps, rate, 0.10)
            lead = None if s_up is None or r5 is None else r5 - s_up
            rows.append([str(sigma), str(rec["n"]), fmt(rho, 2), fmt(s_up), fmt(r5), fmt(r10), fmt(lead),
                         fmt(max(score), 3), fmt(max(rate), 2)])
        rows.append([str(sigma), "all pooled", fmt(spearmanr(pooled_score, pooled_rate).statistic, 2),
                     *["-"] * 6])
        ax.axhline(DEFAULT_RULE["threshold"], color="0.6", lw=0.8, ls=":")
        ax.set(title=f"sigma = {sigma}", xlabel="training step", ylabel="score (solid) / nn rate (dashed)",
               ylim=(-0.02, 1.02))
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle(f"Memorization {SCORE} (k={args.k}, 64 probes) and nearest-neighbour rate every {CHECK_EVERY} "
                 "steps")
    w.table(f"{SCORE} (k={args.k}) vs nn rate over training (64 callback probes per check, every 250 steps "
            "incl. step 0)",
            ["sigma", "N", "Spearman rho", f"score first > {DEFAULT_RULE['threshold']}", "rate first > 5%",
             "rate first > 10%", f"lead (rate>5% minus score>{DEFAULT_RULE['threshold']})", "max score",
             "max rate"], rows)
    w.figure(fig, f"curves_k{args.k}.png")


def replay(history: list[dict], key: str, threshold: float, min_delta: float, patience: int) -> int | None:
    """The step where the callback's stop rule fires on a recorded history (``None``: never)."""
    rule = StopRule(StopConfig(mode="max", threshold=threshold, min_delta=min_delta, patience=patience))
    return next((int(h["step"]) for h in history if rule.update(h[key])), None)


def val_loss_stop(val_loss: list[list[float]], patience: int = 3) -> int | None:
    """Lightning ``EarlyStopping(monitor="val/loss", patience=3, min_delta=0)`` replayed: step it fires."""
    best, wait = float("inf"), 0
    for step, value in val_loss:
        if value < best:
            best, wait = value, 0
        else:
            wait += 1
            if wait >= patience:
                return int(step)
    return None


def study_stopping(args: argparse.Namespace, w: Writer) -> None:
    """Callback stop vs the rate crossing 5%/10%, vs the val-loss rule and a fixed budget; quality there."""
    records = [{**rec, "history": history(args.cache, spec, rec, args.k)} for spec, rec in zip(specs(args), runs(args),
                                                                                            strict=True)]
    fd = FrechetPCA()
    key = f"{timestep_key(args.sigma)}/score"
    rule = {**DEFAULT_RULE, "threshold": args.threshold}
    rows, quality, plots = [], [], []
    for spec, rec in zip(specs(args), records, strict=True):
        hist = rec["history"]
        steps = [int(h["step"]) for h in hist]
        rate = {int(h["step"]): h["nn_rate"] for h in hist}
        stop = replay(hist, key, **rule)
        vstop = val_loss_stop(rec["val_loss"])
        best_val = int(min(rec["val_loss"], key=lambda sv: sv[1])[0]) if rec["val_loss"] else None
        r5, r10 = first_step(steps, list(rate.values()), 0.05), first_step(steps, list(rate.values()), 0.10)
        rows.append([str(rec["n"]), fmt(stop), fmt(rate.get(stop), 2), fmt(r5), fmt(r10), fmt(vstop),
                     fmt(rate.get(vstop), 2), fmt(best_val), fmt(rate[spec.max_steps], 2)])
        for name, step in (("callback", stop), ("val-loss rule", vstop), ("budget", spec.max_steps)):
            if step is None or step == 0:
                continue
            module = checkpoint(args.cache, spec, step)
            quality.append([str(rec["n"]), name, str(step), fmt(rate[step], 2),
                            fmt(heldout_loss(module, spec.num_train), 4),
                            fmt(fd(generate(module, args.fd_samples, seed=2)), 2)])
        plots.append((rec, stop, vstop, r5))
    w.table(f"Where training stops (callback rule replayed on the {SCORE} (k={args.k}) at sigma={args.sigma}: "
            f"threshold {rule['threshold']}, min_delta {rule['min_delta']}, patience "
            f"{rule['patience']}, a check every {CHECK_EVERY} steps; rates from the 64 callback probes)",
            ["N", "callback stop", "nn rate there", "rate first > 5%", "rate first > 10%",
             "val-loss EarlyStopping(patience=3)", "nn rate there", "best val/loss step", "rate at 8000 (budget)"],
            rows)
    w.table(f"Sample quality at the stop: held-out denoising loss (val/loss, 180 held-out digits) and FD-PCA20 "
            f"(Frechet distance of {args.fd_samples} DDIM-50 samples to all 1797 digits in the top-20 PCA space)",
            ["N", "stopped by", "step", "nn rate", "held-out loss", "FD-PCA20"], quality)
    train_fd = [[str(spec.n), fmt(fd(datamodule(spec.num_train).unique_train_data()), 2)] for spec in specs(args)]
    w.table("FD-PCA20 of the training digits themselves (what a perfect copy of the training set scores)",
            ["N", "FD-PCA20"], train_fd)
    _rule_grid(args, records, w)
    _interval_table(records, key, rule, w)
    _stopping_plot(plots, w, key, f"stopping_k{args.k}.png")


def _rule_grid(args: argparse.Namespace, records: list[dict], w: Writer) -> None:
    rows = []
    for sigma in CURVE_SIGMAS:
        key = f"{timestep_key(sigma)}/score"
        for threshold in (0.05, 0.1, 0.2):
            for patience in (1, 2):
                row = [str(sigma), str(threshold), str(patience)]
                for rec in records:
                    stop = replay(rec["history"], key, threshold, DEFAULT_RULE["min_delta"], patience)
                    rate = {int(h["step"]): h["nn_rate"] for h in rec["history"]}
                    row.append("never" if stop is None else f"{stop} ({rate[stop]:.2f})")
                rows.append(row)
    w.table(f"Stop rule grid ({SCORE}, k={args.k}, min_delta {DEFAULT_RULE['min_delta']}): stop step (nn rate there) "
            "per N",
            ["sigma", "threshold", "patience", *[f"N={r['n']}" for r in records]], rows)


def _interval_table(records: list[dict], key: str, rule: dict, w: Writer) -> None:
    """The same rule checked every 250, 500 or 1000 steps (the recorded history, subsampled)."""
    rows = []
    for every in (CHECK_EVERY, 2 * CHECK_EVERY, 4 * CHECK_EVERY):
        row = [str(every)]
        for rec in records:
            hist = [h for h in rec["history"] if int(h["step"]) % every == 0]
            stop = replay(hist, key, **rule)
            rate = {int(h["step"]): h["nn_rate"] for h in hist}
            row.append("never" if stop is None else f"{stop} ({rate[stop]:.2f})")
        rows.append(row)
    w.table(f"Check interval: the rule above on {key} with a check every 250 / 500 / 1000 steps: stop step "
            "(nn rate there)", ["every_n_train_steps", *[f"N={r['n']}" for r in records]], rows)


def _stopping_plot(plots: list, w: Writer, key: str, name: str) -> None:
    fig = Figure(figsize=(4.2 * len(plots), 6), layout="constrained")
    axes = fig.subplots(2, len(plots), sharex="col")
    for col, (rec, stop, vstop, r5) in enumerate(plots):
        top, bottom = axes[0, col], axes[1, col]
        steps = [h["step"] for h in rec["history"]]
        top.plot(steps, [h["nn_rate"] for h in rec["history"]], color="C3", label="nn rate")
        top.plot(steps, [h[key] for h in rec["history"]], color="C0", label=f"score {key}")
        bottom.plot(*zip(*rec["val_loss"], strict=True), color="C2", marker=".", label="val/loss")
        for step, color, what in ((stop, "C0", "callback stop"), (vstop, "C2", "val-loss stop"),
                                  (r5, "C3", "rate > 5%")):
            if step is not None:
                for ax in (top, bottom):
                    ax.axvline(step, color=color, ls="--", lw=1, label=what if ax is top else None)
        top.set(title=f"N = {rec['n']}", ylim=(-0.02, 1.02))
        bottom.set(xlabel="training step", ylabel="held-out loss" if col == 0 else None)
        top.legend(fontsize=7, loc="upper left")
    axes[0, 0].set_ylabel("nn rate / score")
    fig.suptitle("Where each rule stops (no dashed blue line: the callback never stopped)")
    w.figure(fig, name)
