"""Validation study of MemorizationMonitor on 8x8 digits: detection, curves, early stopping, cost.

One command per study; each writes a markdown fragment and PNG plots into ``--out`` (default
``docs/validation``) and prints the command that made every table::

    python -m benchmarks.validation.study train      # train and cache the runs (the other studies do it on demand)
    python -m benchmarks.validation.study detect     # per-sample AUROC / TPR@1%FPR per statistic, sigma, solver
    python -m benchmarks.validation.study curves     # score and nearest-neighbour rate over training, per N
    python -m benchmarks.validation.study stopping   # where the callback stops vs the rate, val-loss and budget
    python -m benchmarks.validation.study cost       # time per check, fraction of training, dense vs Lanczos vs power
    python -m benchmarks.validation.study toy        # the 2-D toy: ring + isolated repeated points
    python -m benchmarks.validation.study gap        # the sharpness-gap stop rule (patch-calibrated) on the digits

Runs (N distinct training digits in {16, 64, 256, all 1617}, 8000 steps, one torch thread) are cached in
``--cache`` (default ``<tempdir>/memcallback-validation``), outside git; see ``validation/runs.py``.
``--quick`` uses N in {16, all}, 4000 steps and fewer probes (a smoke test, not the reported numbers).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from benchmarks.validation.detect import (
    CALLBACK_SCORES,
    STATISTICS,
    TOY_STATISTICS,
    auroc_tpr,
    fpr_threshold,
    measure_stage,
    measure_toy,
    pooled,
    rate_matching_threshold,
    solver_rows,
    youden_threshold,
)
from benchmarks.validation.gap import study_gap
from benchmarks.validation.report import Writer, runs, specs, train_one
from benchmarks.validation.runs import (
    CHECK_EVERY,
    CURVE_SIGMAS,
    RunSpec,
    checkpoint,
    datamodule,
    fmt,
)
from benchmarks.validation.training import study_curves, study_stopping
from memcallback import analyze
from memcallback.core import StopConfig
from memcallback.diffusion import ddim_sample, score_function
from memcallback.measure.analysis import measurement_mode
from memcallback.measure.sharpness import SharpnessConfig, measure_sharpness
from memcallback.spectral import jacobian_operator, lanczos, power_iteration

PER_STAGE = ("top_mu k=4", "top_mu k=8", "mean_mu k=4")


# --------------------------------------------------------------------------------------------------
# Studies
# --------------------------------------------------------------------------------------------------
def study_train(args: argparse.Namespace, w: Writer) -> None:
    """Train (or load) the runs and list their wall times."""
    rows = [[str(r["n"]), str(r["max_steps"]), fmt(r["wall_s"], 0), fmt(r["history"][-1]["nn_rate"], 2)]
            for r in runs(args)]
    w.table("Cached runs", ["N", "steps", "wall s (with 3-sigma monitor)", "final nn rate (64 probes)"], rows)


def study_detect(args: argparse.Namespace, w: Writer) -> None:
    """AUROC / TPR@1%FPR per statistic and sigma; flag-threshold calibration; solver budgets."""
    records = runs(args)
    stages = []
    for spec, rec in zip(specs(args), records, strict=True):
        train_data = datamodule(spec.num_train).unique_train_data()
        for step in args.stages:
            stages.append(measure_stage(checkpoint(args.cache, spec, step), train_data, rec["n"], step,
                                        CURVE_SIGMAS, args.probes))
    ns = sorted({s.n for s in stages})
    w.text(f"Probes: {args.probes} fresh DDIM-50 samples (seed 1) per model and stage; stages {args.stages}; "
           "statistics from the exact 64x64 symmetrized Hessian; label: d1/d2 < 1/3 to the N training digits.\n")
    rows = []
    for n in ns:
        for step in args.stages:
            stage = next(s for s in stages if s.n == n and s.step == step)
            aucs = [fmt(auroc_tpr(stage.copied, stage.values[name, sg])[0]) for name in PER_STAGE
                    for sg in CURVE_SIGMAS]
            rows.append([str(n), str(step), f"{stage.copied.sum()}/{stage.copied.size}", *aucs])
    w.table("Label balance and AUROC of the top_mu score per model and stage (a single stage: no easy early negatives)",
            ["N", "step", "memorized / probes", *[f"{name} sigma={s}" for name in PER_STAGE for s in CURVE_SIGMAS]],
            rows)

    groups = [(f"N={n}", (n,)) for n in ns if n != max(ns)] + [("N=16+64", (16, 64))]
    rows = []
    for sigma in CURVE_SIGMAS:
        for name, (desc, _) in STATISTICS.items():
            row = [str(sigma), name]
            for _, group in groups:
                labels, values = pooled(stages, group, (name, sigma))
                auc, tpr = auroc_tpr(labels, values)
                row += [fmt(auc), fmt(tpr, 2)]
            rows.append([*row, desc])
    header = ["sigma", "statistic"]
    for gname, group in groups:
        labels, _ = pooled(stages, group, ("mu_max", CURVE_SIGMAS[0]))
        header += [f"AUROC {gname} ({labels.sum()}+/{(~labels).sum()}-)", f"TPR@1%FPR {gname}"]
    w.table("Per-sample detection, pooled over stages (+/-: memorized/not; 1% FPR needs >= 100 negatives)",
            [*header, "orientation (larger = memorized)"], rows)

    _calibration(args, stages, ns, w)
    _roc_plot(stages, ns, w)
    _solver_table(args, records, w)


def _calibration(args: argparse.Namespace, stages: list, ns: list[int], w: Writer) -> None:
    """Flag thresholds for every score the callback offers: Youden on N=16+64, 1% FPR, and rate matching."""
    rows, matched = [], {}
    for sigma in CURVE_SIGMAS:
        for name in CALLBACK_SCORES:
            key = (name, sigma)
            labels, values = pooled(stages, (16, 64), key, "scores")
            lab_all, val_all = pooled(stages, tuple(ns), key, "scores")
            _, gen_values = pooled(stages, (max(ns),), key, "scores")
            match, _ = rate_matching_threshold(stages, key)
            matched[key] = match
            for rule, thr in (("Youden N=16+64", youden_threshold(labels, values)),
                              ("1% FPR, all N", fpr_threshold(val_all[~lab_all], 0.01)),
                              ("rate matching", match)):
                err = np.mean([abs((s.scores[key] > thr).mean() - s.copied.mean()) for s in stages])
                rows.append([str(sigma), name, rule, fmt(thr, 2), fmt((values[labels] > thr).mean(), 2),
                             fmt((values[~labels] > thr).mean(), 3), fmt((gen_values > thr).mean(), 3), fmt(err, 3),
                             fmt(auroc_tpr(labels, values)[0])])
    w.table("Flag-threshold calibration (score > threshold flags a sample). Rate matching: the threshold whose "
            "flagged fraction is closest to the nn rate, averaged over every model and stage",
            ["sigma", "score", "rule", "threshold", "TPR N=16+64", "FPR N=16+64", f"flagged on N={max(ns)}",
             "mean |flagged - nn rate|", "AUROC N=16+64"], rows)
    cols = [(name, args.sigma, matched[name, args.sigma]) for name in CALLBACK_SCORES] + [
        ("top_mu k=8", args.sigma, 0.5)]
    rows = [[str(st.n), str(st.step), fmt(st.copied.mean(), 2),
             *[fmt((st.scores[name, sg] > thr).mean(), 2) for name, sg, thr in cols]] for st in stages]
    w.table(f"Flagged fraction against the nn rate per model and stage at sigma={args.sigma}",
            ["N", "step", "nn rate", *[f"{name} > {thr:g}" for name, _, thr in cols]], rows)


def _roc_plot(stages: list, ns: list[int], w: Writer) -> None:
    from sklearn.metrics import roc_curve

    fig = Figure(figsize=(13, 4))
    for ax, sigma in zip(fig.subplots(1, len(CURVE_SIGMAS)), CURVE_SIGMAS, strict=True):
        for n in ns:
            if n == max(ns):
                continue
            for name, style in (("top_mu k=4", "-"), ("top_mu k=8", "-."), ("effective_dim", ":"),
                                ("hs_norm", "--")):
                labels, values = pooled(stages, (n,), (name, sigma))
                if labels.all() or not labels.any():
                    continue
                fpr, tpr, _ = roc_curve(labels, values)
                ax.plot(fpr, tpr, style, label=f"N={n} {name}", color=f"C{ns.index(n)}")
        ax.plot([0, 1], [0, 1], color="0.7", lw=0.8)
        ax.set(title=f"sigma = {sigma}", xlabel="false positive rate", ylabel="true positive rate")
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("ROC of sharpness statistics vs the nearest-neighbour label (pooled over stages)")
    w.figure(fig, "detect_roc.png")


def _solver_table(args: argparse.Namespace, records: list[dict], w: Writer) -> None:
    rows = []
    for spec in specs(args):
        if spec.n not in (16, 64):
            continue
        train_data = datamodule(spec.num_train).unique_train_data()
        per_cfg: dict[tuple[str, int, int], list[dict]] = {}
        for step in args.stages:
            for row in solver_rows(checkpoint(args.cache, spec, step), train_data, args.solver_sigma,
                                   args.solver_probes, (4, 8, 16)):
                per_cfg.setdefault((row["solver"], row["k"], row["iters"]), []).append(row)
        for (solver, k, iters), items in per_cfg.items():
            labels = np.concatenate([r["labels"] for r in items])
            score = np.concatenate([r["score"] for r in items])
            auc, tpr = auroc_tpr(labels, score)
            rows.append([str(spec.n), solver, str(k), str(iters), fmt(auc), fmt(tpr, 2),
                         fmt(max(r["error"] for r in items), 4), fmt(statistics.mean(r["converged"] for r in items), 2),
                         str(max(r["matvecs"] for r in items)), fmt(statistics.mean(r["seconds"] for r in items), 2)])
    w.table(f"Solver budget at sigma={args.solver_sigma} (top_mu score, pooled over stages {args.stages}; Lanczos "
            "computes everything the callback logs: top-k, smallest eigenvalue, 16 Hutchinson and 4 asymmetry probes)",
            ["N", "solver", "k", "max Lanczos steps", "AUROC", "TPR@1%FPR", "max |score - dense|", "converged",
             "products / sample", f"s per check ({args.solver_probes} probes)"], rows)


def study_cost(args: argparse.Namespace, w: Writer) -> None:
    """Time per check at the defaults and its fraction of training; dense vs Lanczos vs power iteration."""
    records = runs(args)
    torch.set_num_threads(1)
    spec = specs(args)[0]
    module = checkpoint(args.cache, spec, spec.max_steps)
    train_data = datamodule(spec.num_train).unique_train_data()
    step_s = _step_time(args.cost_steps)
    rows = []
    for solver, k in itertools.product(("dense", "lanczos"), sorted({8, args.k})):
        cfg = SharpnessConfig(solver=solver, k=k)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            analyze(module, num_samples=64, sigmas=(args.sigma,), config=cfg, train_data=train_data)
            times.append(time.perf_counter() - start)
        check = statistics.median(times)
        rows.append([solver, str(k), fmt(check, 3), fmt(100 * check / (CHECK_EVERY * step_s), 1),
                     fmt(100 * check / (500 * step_s), 1)])
    w.table(f"Cost of one check (64 probes, DDIM-50, sigma={args.sigma}, N={spec.n} model at step "
            f"{spec.max_steps}, median of {args.repeats}) vs training ({1000 * step_s:.1f} ms/step measured "
            f"over {args.cost_steps} steps without callback)",
            ["solver", "k", "s per check", "% of training at every 250 steps", "% at every 500 steps"], rows)
    rec = records[0]
    seconds = [h["seconds"] for h in rec["history"]]
    w.text(f"In the recorded N={rec['n']} run (3 noise levels per check, so ~3x the one-level cost) the "
           f"{len(seconds)} checks took median {statistics.median(seconds):.2f} s, "
           f"{sum(seconds):.1f} s of {rec['wall_s']:.0f} s wall time "
           f"({100 * sum(seconds) / rec['wall_s']:.1f}%), on a CPU shared with another training process.\n")
    w.table(f"Top-{args.k} eigenvalues of S at sigma={args.sigma} on the same 64 probes: solver against the dense "
            f"reference (median of {args.repeats})",
            ["method", "products / sample", "max |mu - mu_dense|", "all converged", "s"], _solver_cost(args, module))


def _step_time(steps: int) -> float:
    import lightning.pytorch as pl

    from memcallback.app.models import DiffusionModule, ResidualMLP

    pl.seed_everything(0, verbose=False)
    module = DiffusionModule(ResidualMLP((1, 8, 8), hidden=256, num_blocks=3))
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         num_sanity_val_steps=0, default_root_dir=tempfile.gettempdir())
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule(16))
    return (time.perf_counter() - start) / steps


def _solver_cost(args: argparse.Namespace, module: torch.nn.Module) -> list[list[str]]:
    t = module.schedule.timestep_for_sigma(args.sigma)
    sigma2 = module.schedule.sigma(t, torch.float64).item() ** 2
    noise = torch.Generator().manual_seed(0)
    with measurement_mode(module):
        x = ddim_sample(module, torch.randn(64, *module.data_shape, generator=noise), 50, record=[t]).trajectory[t]
        fn = score_function(module, t)
        ref = measure_sharpness(fn, x, t, sigma2**0.5, SharpnessConfig(k=args.k, solver="dense")).mu
        op = jacobian_operator(fn, x)
        methods = {
            "dense (jacrev + eigh)": lambda: measure_sharpness(fn, x, t, sigma2**0.5,
                                                               SharpnessConfig(k=args.k, solver="dense")),
            "lanczos (tol 1e-3)": lambda: lanczos(op, args.k, which="LA", tol=1e-3, generator=torch.Generator()),
            "power iteration (shifted block, tol 1e-3)": lambda: power_iteration(
                op, args.k, which="LA", tol=1e-3, generator=torch.Generator()),
        }
        rows = []
        for name, run in methods.items():
            times, result = [], None
            for _ in range(args.repeats):
                start = time.perf_counter()
                result = run()
                times.append(time.perf_counter() - start)
            if name.startswith("dense"):
                mu, products, conv = result.mu, 64, True
            else:
                mu, products = 1.0 + sigma2 * result.eigenvalues, result.num_matvecs
                conv = bool(result.converged.all())
            rows.append([name, str(products), fmt((mu - ref).abs().max().item(), 4), str(conv),
                         fmt(statistics.median(times), 3)])
    return rows


def study_toy(args: argparse.Namespace, w: Writer) -> None:
    """The 2-D toy (ring + 4 isolated repeated points): AUROC per statistic and sigma, and a scatter plot."""
    from memcallback.app.data import ToyMixtureDataModule

    spec = RunSpec(None, args.toy_steps, toy=True)
    train_one(args.cache, spec)
    dm = ToyMixtureDataModule(seed=0)
    dm.setup("fit")
    train_data = dm.unique_train_data()
    isolated = train_data[-dm.num_isolated:]  # the isolated points come last
    rows, last = [], None
    for step in args.toy_stages:
        samples, labels, values = measure_toy(checkpoint(args.cache, spec, step), train_data, CURVE_SIGMAS,
                                              args.probes)
        near = (torch.cdist(samples, isolated).min(dim=1).values < args.toy_radius).numpy()
        for sigma in CURVE_SIGMAS:
            cells = [f"{fmt(auroc_tpr(labels, values[name, sigma])[0], 2)} / "
                     f"{fmt(auroc_tpr(near, values[name, sigma])[0], 2)}" for name in TOY_STATISTICS]
            rows.append([str(step), str(sigma), f"{labels.sum()}/{labels.size}", f"{near.sum()}", *cells])
        last = (step, samples, labels, values)
    w.table(f"2-D toy ({args.probes} probes, seed 1, k=1, dense): AUROC against the nn label / against 'within "
            f"{args.toy_radius} of an isolated point'",
            ["step", "sigma", "nn-memorized / probes", f"within {args.toy_radius} of an isolated point",
             *TOY_STATISTICS], rows)
    step, samples, labels, values = last
    fig = Figure(figsize=(13, 4))
    for ax, sigma in zip(fig.subplots(1, len(CURVE_SIGMAS)), CURVE_SIGMAS, strict=True):
        points = ax.scatter(samples[:, 0], samples[:, 1], c=values["top_mu k=1", sigma], s=8, cmap="viridis",
                            vmin=0, vmax=1)
        ax.scatter(samples[labels, 0], samples[labels, 1], facecolors="none", edgecolors="red", s=40, lw=0.6,
                   label="nn label: memorized")
        ax.scatter(isolated[:, 0], isolated[:, 1], marker="x", color="black", s=40, label="isolated points")
        ax.set(title=f"sigma = {sigma}", aspect="equal", xlim=(-1.4, 1.4), ylim=(-1.4, 1.4))
        ax.legend(fontsize=7, loc="lower left")
        fig.colorbar(points, ax=ax, label="score top_mu k=1")
    fig.suptitle(f"2-D toy at step {step}: samples coloured by the memorization score (view clipped to [-1.4, 1.4])")
    w.figure(fig, "toy.png")


STUDIES = {"train": study_train, "detect": study_detect, "curves": study_curves, "stopping": study_stopping,
           "cost": study_cost, "toy": study_toy, "gap": study_gap}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", choices=sorted(STUDIES))
    parser.add_argument("--quick", action="store_true", help="N in {16, all}, 4000 steps, 128 probes")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "memcallback-validation")
    parser.add_argument("--out", type=Path, default=Path("docs/validation"))
    parser.add_argument("--n", nargs="+", default=["16", "64", "256", "all"], help="training-set sizes")
    parser.add_argument("--steps", type=int, default=8000, help="training steps per run")
    parser.add_argument("--jobs", type=int, default=2, help="training processes at a time")
    parser.add_argument("--stages", type=int, nargs="+", default=[1000, 2000, 4000, 8000])
    parser.add_argument("--probes", type=int, default=256, help="probes per model and stage (detect)")
    parser.add_argument("--k", type=int, default=4, help="score directions (curves, stopping, cost)")
    parser.add_argument("--threshold", type=float, help="stop-rule threshold (stopping)",
                        default=StopConfig(monitor="memorization/score").resolve("memorization/", ()).threshold)
    parser.add_argument("--sigma", type=float, default=0.1, help="noise level of the stop rule and cost")
    parser.add_argument("--solver-probes", type=int, default=128, help="probes per model and stage (solver table)")
    parser.add_argument("--solver-sigma", type=float, default=0.1, help="noise level of the solver table")
    parser.add_argument("--fd-samples", type=int, default=512)
    parser.add_argument("--cost-steps", type=int, default=500)
    parser.add_argument("--toy-steps", type=int, default=4000, help="training steps of the 2-D toy")
    parser.add_argument("--toy-radius", type=float, default=0.1, help="toy: 'copy of an isolated point' radius")
    parser.add_argument("--toy-stages", type=int, nargs="+", default=[1000, 2000, 4000])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.quick:
        args.n, args.steps, args.stages, args.probes = ["16", "all"], 4000, [1000, 4000], 128
        args.solver_probes, args.fd_samples, args.repeats = 64, 256, 3
    torch.set_num_threads(1)
    Writer(args.out, args.study).run(STUDIES[args.study], args)


if __name__ == "__main__":
    main()
