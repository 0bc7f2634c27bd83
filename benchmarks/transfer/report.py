"""The transfer study's tables: what a user decides on, per family and run, from the cached measurements.

    python -m benchmarks.transfer.report            # every measured run -> docs/transfer/results.md

Per run: the default stop (the watch's own decision at every checkpoint, held-out data given: the loss gap) and
the stop a user without held-out data gets (the score's rule of ``memcallback.core.calibration`` replayed on the
same checks), each with the nn-rate there and its 95% bootstrap interval, the step at which that interval's lower
bound first passes 10% (the deadline), points of memorization prevented, and quality at the stop against the run's
best; the flag: flagged fraction against the nn-rate, realized false-positive rate among the probes that are not
copies and TPR among those that are.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import torch

from benchmarks.transfer.families import FAMILIES
from benchmarks.transfer.runs import CACHE, RunSpec, run_dir
from memcallback.core import StopConfig, StopRule
from memcallback.measure import SharpnessConfig, names
from memcallback.measure.null import conformal_threshold

BOOTSTRAP = 2000
DEADLINE_RATE = 0.10
TRACK_FACTOR = 1.5
FPR = SharpnessConfig().flag_fpr  # the opt-in null flag's stated rate
SCORE_RULE = StopConfig(monitor=names.PREFIX + names.SCORE).resolve(names.PREFIX, ())
FIXED_FLAG = SharpnessConfig().flag_threshold  # the flag without held-out data


def rate_interval(copied: torch.Tensor, seed: int = 0) -> tuple[float, float, float]:
    """The copy rate and its 95% percentile-bootstrap interval over the samples."""
    x = copied.double()
    idx = torch.randint(len(x), (BOOTSTRAP, len(x)), generator=torch.Generator().manual_seed(seed))
    boot = x[idx].mean(dim=1)
    return x.mean().item(), boot.quantile(0.025).item(), boot.quantile(0.975).item()


def replay(values: list[float], config: StopConfig) -> int | None:
    """Index of the check at which ``StopRule(config)`` fires on ``values``, or None."""
    rule = StopRule(config)
    for i, value in enumerate(values):
        if rule.update(value):
            return i
    return None


def load(spec: RunSpec, cache: Path) -> list[dict[str, Any]] | None:
    path = run_dir(spec, cache) / "measured.pt"
    return torch.load(path, weights_only=False) if path.exists() else None


def fmt_rate(r: tuple[float, float, float]) -> str:
    return f"{r[0]:.0%} [{r[1]:.0%}, {r[2]:.0%}]"


def stop_row(rows: list[dict[str, Any]], index: int | None, deadline: int | None, memorize: bool) -> list[str]:
    """Columns of one stop rule: step, nn-rate there, verdict, points prevented, quality at the stop vs best."""
    final = rate_interval(rows[-1]["gt_copied"])
    if index is None:
        verdict = ("late: never stopped" if deadline is not None else "no stop needed") if memorize else "no false stop"
        return ["never", "-", verdict, "0", "-", "-"]
    row = rows[index]
    rate = rate_interval(row["gt_copied"])
    if memorize:
        verdict = "in time" if deadline is None or row["step"] < deadline else f"late (deadline {deadline})"
    else:
        verdict = "**false stop**"
    best_loss = min(r["heldout_loss"] for r in rows)
    best_fd = min(r["frechet"] for r in rows)
    return [str(row["step"]), fmt_rate(rate), verdict, f"{100 * (final[0] - rate[0]):+.0f}",
            f"{row['heldout_loss']:.4f} ({row['heldout_loss'] / best_loss:.2f}x best)",
            f"{row['frechet']:.1f} ({row['frechet'] / best_fd:.2f}x best)"]


def run_summary(spec: RunSpec, rows: list[dict[str, Any]]) -> dict[str, Any]:
    rates = [rate_interval(r["gt_copied"], seed=i) for i, r in enumerate(rows)]
    deadline = next((r["step"] for r, (_, low, _) in zip(rows, rates, strict=True) if low > DEADLINE_RATE), None)
    default = next((i for i, r in enumerate(rows) if r["fired"]), None)
    score = replay([r["scalars"][names.SCORE] for r in rows], SCORE_RULE)
    flagged = torch.tensor([r["scalars"][names.FLAGGED_FRACTION] for r in rows])
    fixed = torch.tensor([(r["probe_score"] > FIXED_FLAG).double().mean().item() for r in rows])
    copied = torch.cat([r["probe_copied"] for r in rows])
    probe_flags = torch.cat([r["probe_flagged"] for r in rows])
    tracked = [(r["scalars"][names.FLAGGED_FRACTION], rate[0]) for r, rate in zip(rows, rates, strict=True)
               if rate[0] > DEADLINE_RATE]
    nulls = [(r["probe_score"], r["null_score"]) for r in rows if r["null_score"] is not None and r["step"] > 0]
    null_flagged = [(p > conformal_threshold(n, FPR)).double().mean().item() for p, n in nulls]
    return {"spec": spec, "rows": rows, "rates": rates, "deadline": deadline, "default": default, "score": score,
            "flagged_mean": flagged.mean().item(), "fixed_mean": fixed.mean().item(),
            "fpr": probe_flags[~copied].double().mean().item() if (~copied).any() else math.nan,
            "tpr": probe_flags[copied].double().mean().item() if copied.any() else math.nan,
            "num_copies": int(copied.sum()), "tracked": tracked,
            "null_flagged": null_flagged, "null_steps": [r["step"] for r in rows if r["null_score"] is not None
                                                         and r["step"] > 0]}


def write(summaries: list[dict[str, Any]], out: Path) -> None:
    lines = ["# Transfer study: results", "", "Made by `python -m benchmarks.transfer.report` from the cached "
             "measurements (`python -m benchmarks.transfer.measure`); protocol in [protocol.md](protocol.md).", ""]
    lines += ["## Stopping", "", "| run | role | measured to | nn-rate there [95%] | deadline (nn lower bound > 10%) | "
              "rule | stop step | nn-rate at stop [95%] | verdict | points prevented | held-out loss at stop | "
              "PCA-Frechet at stop |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        spec = s["spec"]
        role = FAMILIES[spec.family].role
        for rule, index in (("default (loss gap, held-out data)", s["default"]), ("score (no held-out data)",
                                                                                   s["score"])):
            cells = stop_row(s["rows"], index, s["deadline"], spec.memorize)
            end = f"{s['rows'][-1]['step']} | {fmt_rate(s['rates'][-1])}"
            lines.append(f"| {spec.label} | {role} | {end} | {s['deadline'] or 'never'} | {rule} | "
                         + " | ".join(cells) + " |")
    lines += ["", "## The flag", "", "The shipped flag (a fixed score threshold, `flag_threshold`). Realized FPR / "
              "TPR: among the callback's probes that are not copies / that are (their own nearest-neighbour labels), "
              "pooled over the run's checks.", "",
              "| run | mean flagged (as logged) | mean flagged (fixed 0.25) | realized FPR | TPR (copies) | "
              "flagged / nn-rate where nn-rate > 10% |", "|---|---|---|---|---|---|"]
    for s in summaries:
        ratios = ", ".join(f"{f / r:.2f}" for f, r in s["tracked"]) or "-"
        lines.append(f"| {s['spec'].label} | {s['flagged_mean']:.3f} | {s['fixed_mean']:.3f} | {s['fpr']:.3f} | "
                     f"{s['tpr']:.2f} ({s['num_copies']}) | {ratios} |")
    lines += ["", "The held-out null (opt-in, `probes.null_images=64`), where it was measured (the first checks of "
              "textures_gen, before it became opt-in): flagged fraction of the probes at each check at a nominal "
              f"{FPR:.0%} on a model whose samples have no copy.", ""]
    for s in summaries:
        if s["null_flagged"]:
            cells = ", ".join(f"{step}: {f:.2f}" for step, f in zip(s["null_steps"], s["null_flagged"], strict=True))
            lines.append(f"- {s['spec'].label}: {cells}")
    lines += ["", "## Per check", ""]
    for s in summaries:
        lines += [f"### {s['spec'].label}", "", "| step | loss gap | score | flag thr | flagged | nn-rate [95%] | "
                  "held-out loss | PCA-Frechet | fired |", "|---|---|---|---|---|---|---|---|---|"]
        for r, rate in zip(s["rows"], s["rates"], strict=True):
            sc = r["scalars"]
            lines.append(f"| {r['step']} | {sc.get(names.LOSS_GAP, math.nan):+.3f} | {sc[names.SCORE]:.4f} | "
                         f"{sc[names.FLAG_THRESHOLD]:.4f} | {sc[names.FLAGGED_FRACTION]:.2f} | {fmt_rate(rate)} | "
                         f"{r['heldout_loss']:.4f} | {r['frechet']:.1f} | {'yes' if r['fired'] else ''} |")
        lines.append("")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")


def compact(summaries: list[dict[str, Any]]) -> str:
    """The README's table: per family, where each run's default and score stops fell against its deadline."""
    by_run = {(s["spec"].family, s["spec"].memorize): s for s in summaries}

    def stop(s: dict[str, Any] | None, index_key: str) -> str:
        if s is None:
            return "not measured"
        index = s[index_key]
        if index is None:
            return "never"
        rate = s["rates"][index]
        return f"{s['rows'][index]['step']} ({rate[0]:.0%} copies)"

    lines = ["| family | role | memorizing: copies at the end | deadline | stop, held-out data | stop, none | "
             "generalizing: stop, held-out data | stop, none |", "|---|---|---|---|---|---|---|---|"]
    for name, family in FAMILIES.items():
        mem, gen = by_run.get((name, True)), by_run.get((name, False))
        if mem is None and gen is None:
            continue
        end = "-" if mem is None else f"{mem['rates'][-1][0]:.0%} at {mem['rows'][-1]['step']}"
        deadline = "-" if mem is None else str(mem["deadline"] or "never")
        measured = "" if gen is None or gen["rows"][-1]["step"] == gen["spec"].steps else (
            f" (to step {gen['rows'][-1]['step']})")
        lines.append(f"| {name} | {family.role} | {end} | {deadline} | {stop(mem, 'default')} | {stop(mem, 'score')} | "
                     f"{stop(gen, 'default')}{measured} | {stop(gen, 'score')}{measured} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--out", type=Path, default=Path("docs/transfer/results.md"))
    parser.add_argument("--families", nargs="+", default=list(FAMILIES))
    args = parser.parse_args()
    summaries = []
    for family in args.families:
        for memorize in (True, False):
            spec = RunSpec(family, memorize)
            rows = load(spec, args.cache)
            if rows:
                summaries.append(run_summary(spec, rows))
    write(summaries, args.out)
    print(args.out.read_text())
    print(compact(summaries))


if __name__ == "__main__":
    main()
