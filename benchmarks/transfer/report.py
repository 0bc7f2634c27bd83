"""The transfer study's tables: what a user decides on, per family and run, from the cached measurements.

    python -m benchmarks.transfer.report            # every measured run -> docs/transfer/results.md

Per run: the default stop (the watch's own decision at every checkpoint, held-out data given: the loss gap), the
default stop a user without held-out data gets (the probes' copy rate at 95% confidence, ``nn_rate_lower``, with its
rule of ``memcallback.core.calibration`` replayed on the same checks) and the score's rule (the default only where
the watch gets no training images either; replayed the same way), each with the nn-rate there and its 95% bootstrap
interval, the step at which that interval's lower bound first passes 10% (the deadline), points of memorization
prevented, and quality at the stop against the run's best; the flag (the copy flag,
``memcallback.measure.copy_flag``: copies below the held-out quantile): its stated rate (``flag_fpr`` as logged),
the flagged fraction on generalizing runs (its realized false-positive rate: none of their samples is a copy), TPR
among the ground-truth copies, and flagged / nn-rate at the checks where the nn-rate passes 10%; each as the callback
logged it (its 64 probes) and on the 256 ground-truth samples.
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

BOOTSTRAP = 2000
DEADLINE_RATE = 0.10
TRACK_FACTOR = 1.5
SCORE_RULE = StopConfig(monitor=names.PREFIX + names.SCORE).resolve(names.PREFIX, ())
COPY_RATE_RULE = StopConfig().resolve(names.PREFIX, (names.NN_RATE_LOWER,))  # the default without held-out data
FIXED_FLAG = SharpnessConfig().flag_threshold  # the score flag (without training data)


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
    copy_rate = replay([r["scalars"][names.NN_RATE_LOWER] for r in rows], COPY_RATE_RULE)
    logged = torch.tensor([r["scalars"][names.FLAGGED_FRACTION] for r in rows])
    gt_flagged = torch.stack([r["gt_flagged"].double().mean() for r in rows])
    fixed = torch.tensor([(r["probe_score"] > FIXED_FLAG).double().mean().item() for r in rows])
    copied, flags = torch.cat([r["gt_copied"] for r in rows]), torch.cat([r["gt_flagged"] for r in rows])
    probe_copied, probe_flags = torch.cat([r["probe_copied"] for r in rows]), torch.cat([r["probe_flagged"]
                                                                                          for r in rows])
    tracked = [(r["step"], logged[i].item(), gt_flagged[i].item(), rates[i][0]) for i, r in enumerate(rows)
               if rates[i][0] > DEADLINE_RATE]
    return {"spec": spec, "rows": rows, "rates": rates, "deadline": deadline, "default": default, "score": score,
            "copy_rate": copy_rate,
            "fpr_stated": rows[-1]["scalars"][names.FLAG_FPR], "ratio": rows[-1]["scalars"][names.FLAG_RATIO],
            "logged": logged, "gt_flagged": gt_flagged, "fixed_mean": fixed.mean().item(),
            "tpr": flags[copied].double().mean().item() if copied.any() else math.nan, "num_copies": int(copied.sum()),
            "probe_tpr": probe_flags[probe_copied].double().mean().item() if probe_copied.any() else math.nan,
            "num_probe_copies": int(probe_copied.sum()), "tracked": tracked}


def write(summaries: list[dict[str, Any]], out: Path) -> None:
    lines = ["# Transfer study: results", "", "Made by `python -m benchmarks.transfer.report` from the cached "
             "measurements (`python -m benchmarks.transfer.measure`); protocol in [protocol.md](protocol.md).", ""]
    lines += ["## Stopping", "", "| run | role | measured to | nn-rate there [95%] | deadline (nn lower bound > 10%) | "
              "rule | stop step | nn-rate at stop [95%] | verdict | points prevented | held-out loss at stop | "
              "PCA-Frechet at stop |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        spec = s["spec"]
        role = FAMILIES[spec.family].role
        for rule, index in (("default (loss gap, held-out data)", s["default"]),
                            ("default (copy rate, no held-out data)", s["copy_rate"]),
                            ("score (no training images either)", s["score"])):
            cells = stop_row(s["rows"], index, s["deadline"], spec.memorize)
            end = f"{s['rows'][-1]['step']} | {fmt_rate(s['rates'][-1])}"
            lines.append(f"| {spec.label} | {role} | {end} | {s['deadline'] or 'never'} | {rule} | "
                         + " | ".join(cells) + " |")
    lines += ["", "## The flag", "", "The shipped flag (amendment 3 of constants.md): a probe is flagged when its "
              "nearest-neighbour distance ratio is below both the ground truth's 1/3 and the held-out images' "
              "conformal quantile at `flag_fpr` (`flag ratio`: the lower of the two; the stated rate is the one "
              "logged, above 0.01 only where the held-out images are too few). Where the flag ratio is 1/3 the flag "
              "is the copy label itself, so its tracking of the nn-rate holds by construction: on the samples "
              "exactly, on the logged probes up to the difference between the two sample sets. *Logged*: the "
              "callback's 64 "
              "probes at each check; *samples*: the same test on the 256 ground-truth samples. On a generalizing run "
              "every flag is a false positive (criterion: mean <= 2x the stated rate); TPR: flagged among the "
              "ground-truth copies (d1/d2 < 1/3), pooled over checks; tracking: flagged / nn-rate at the checks "
              "where the nn-rate passes 10% (criterion: within [0.67, 1.5]). The score flag (score > "
              f"{FIXED_FLAG}) is shown for comparison.", "",
              "| run | role | stated FPR | flag ratio | mean flagged, logged (max) | mean flagged, samples (max) | "
              "TPR samples (copies) | TPR logged (copies) | flagged / nn-rate where nn-rate > 10%: step logged / "
              "samples | mean flagged by score > 0.25 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        ratios = "; ".join(f"{step}: {f / r:.2f} / {g / r:.2f}" for step, f, g, r in s["tracked"]) or "-"
        lines.append(f"| {s['spec'].label} | {FAMILIES[s['spec'].family].role} | {s['fpr_stated']:.3f} | "
                     f"{s['ratio']:.3f} | {s['logged'].mean():.3f} ({s['logged'].max():.3f}) | "
                     f"{s['gt_flagged'].mean():.3f} ({s['gt_flagged'].max():.3f}) | {s['tpr']:.2f} "
                     f"({s['num_copies']}) | {s['probe_tpr']:.2f} ({s['num_probe_copies']}) | {ratios} | "
                     f"{s['fixed_mean']:.3f} |")
    lines += ["", "## Per check", ""]
    for s in summaries:
        lines += [f"### {s['spec'].label}", "", "| step | loss gap | score | flagged, logged | flagged, samples | "
                  "copy rate, logged (95% lower bound) | nn-rate [95%] | held-out loss | PCA-Frechet | fired |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for i, (r, rate) in enumerate(zip(s["rows"], s["rates"], strict=True)):
            sc = r["scalars"]
            lines.append(f"| {r['step']} | {sc.get(names.LOSS_GAP, math.nan):+.3f} | {sc[names.SCORE]:.4f} | "
                         f"{sc[names.FLAGGED_FRACTION]:.2f} | {s['gt_flagged'][i]:.2f} | {sc[names.NN_RATE]:.0%} "
                         f"({sc[names.NN_RATE_LOWER]:.1%}) | {fmt_rate(rate)} | "
                         f"{r['heldout_loss']:.4f} | {r['frechet']:.1f} | {'yes' if r['fired'] else ''} |")
        lines.append("")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")


def compact(summaries: list[dict[str, Any]]) -> str:
    """The README's table: per family, where each run's default stops (with and without held-out data) fell against
    its deadline."""
    by_run = {(s["spec"].family, s["spec"].memorize): s for s in summaries}

    def stop(s: dict[str, Any] | None, index_key: str) -> str:
        if s is None:
            return "not measured"
        index = s[index_key]
        if index is None:
            return "never"
        rate = s["rates"][index]
        return f"{s['rows'][index]['step']} ({rate[0]:.0%} copies)"

    lines = ["| family | role | memorizing: copies at the end | deadline | stop, held-out data | stop, no held-out "
             "data | generalizing: stop, held-out data | stop, no held-out data |", "|---|---|---|---|---|---|---|---|"]
    for name, family in FAMILIES.items():
        mem, gen = by_run.get((name, True)), by_run.get((name, False))
        if mem is None and gen is None:
            continue
        end = "-" if mem is None else f"{mem['rates'][-1][0]:.0%} at {mem['rows'][-1]['step']}"
        deadline = "-" if mem is None else str(mem["deadline"] or "never")
        measured = "" if gen is None or gen["rows"][-1]["step"] == gen["spec"].steps else (
            f" (to step {gen['rows'][-1]['step']})")
        lines.append(f"| {name} | {family.role} | {end} | {deadline} | {stop(mem, 'default')} | "
                     f"{stop(mem, 'copy_rate')} | "
                     f"{stop(gen, 'default')}{measured} | {stop(gen, 'copy_rate')}{measured} |")
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
