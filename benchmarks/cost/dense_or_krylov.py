"""Is the exact dense Jacobian the cheaper path where ``solver="auto"`` takes it? Side by side on trained UNets.

    python -m benchmarks.cost.dense_or_krylov gray:mem --steps 1000 2000 3000 [--repeats 2]

For each cached transfer-study checkpoint (``benchmarks/transfer/runs.py``; EMA weights, as the callback measures
them) one default check's measurement (64 probes, DDIM-50, sigma 0.1, ``analyze``) is made with
``SharpnessConfig(solver="dense")`` and with the Krylov path at the default budget (``solver="lanczos"``,
``krylov_steps=26``), alternating, ``repeats`` times each, one torch thread. Prints the wall time of each and their
ratio, the products per probe of each (``num_matvecs``), the Krylov score's error against the exact one (mean and
max over the probes), and both scores' AUROC against the probes' nearest-neighbour labels (detection).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from benchmarks.transfer.runs import CACHE, checkpoint, datamodule, parse_spec
from memcallback.measure import SharpnessConfig, analyze
from memcallback.measure.report import auroc

PROBES, SAMPLING_STEPS = 64, 50


def compare(text: str, step: int, repeats: int) -> str:
    spec = parse_spec(text, 3000, 250)
    train = datamodule(spec).unique_train_data()
    shape = tuple(train.shape[1:])
    model = checkpoint(spec, step, shape, CACHE)
    dense = SharpnessConfig(solver="dense")
    krylov = dataclasses.replace(dense, solver="lanczos")
    seconds: dict[str, list[float]] = {"dense": [], "krylov": []}
    reports = {}
    for _ in range(repeats):
        for name, config in (("dense", dense), ("krylov", krylov)):
            start = time.perf_counter()
            reports[name] = analyze(model, num_samples=PROBES, num_sampling_steps=SAMPLING_STEPS, config=config,
                                    train_data=train)
            seconds[name].append(time.perf_counter() - start)
    exact, approx = (reports[n].primary for n in ("dense", "krylov"))
    error = (approx.memorization_score.double() - exact.memorization_score.double()).abs()
    copied = reports["dense"].labels.copied
    aucs = [auroc(s.memorization_score, copied) if 0 < copied.sum() < len(copied) else float("nan")
            for s in (exact, approx)]
    t_dense, t_krylov = (statistics.median(seconds[n]) for n in ("dense", "krylov"))
    products = [int(s.num_matvecs) for s in (exact, approx)]
    return (f"| {spec.label} | {step} | {torch.Size(shape).numel()} | {products[0]} / {products[1]} | "
            f"{t_dense:.1f} / {t_krylov:.1f} | {t_dense / t_krylov:.2f} | {exact.memorization_score.mean():.4f} / "
            f"{approx.memorization_score.mean():.4f} | {error.mean():.4f} / {error.max():.4f} | "
            f"{copied.double().mean():.2f} | {aucs[0]:.3f} / {aucs[1]:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="FAMILY:mem|gen of the transfer study")
    parser.add_argument("--steps", nargs="+", type=int, default=[1000, 2000, 3000])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| run | step | d | products per probe, dense / Krylov | s, dense / Krylov | ratio | mean score, dense / "
          "Krylov | Krylov error, mean / max | nn-rate | AUROC, dense / Krylov |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for text in args.runs:
        for step in args.steps:
            print(compare(text, step, args.repeats), flush=True)
    print(f"\n_torch {torch.__version__}, 1 thread._")


if __name__ == "__main__":
    main()
