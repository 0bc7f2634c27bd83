"""Do the copy labels of a labels-only check hold at fewer sampler steps? The transfer study's cached checkpoints,
sampled again at ``K`` DDIM steps from the same initial noise as their DDIM-50 labels (docs/transfer/label_steps.md).

    python -m benchmarks.transfer.label_steps textures:mem textures:gen [--steps 10 20]

Reads each run's ``measured.pt`` (``benchmarks/transfer/measure.py``: the 256 ground-truth samples' DDIM-50 labels
and the callback's 64 probes' labels, per checkpoint) and prints, per run and ``K``, a table row: the largest
shortfall and excess of the 256-sample copy rate at ``K`` against DDIM-50 over the checkpoints, the lowest label
agreement, and the step at which the default copy-rate stop (``nn_rate_lower``, ``CALIBRATED_RULES``) fires on the
64 probes labelled at ``K`` and at 50. Each run's per-checkpoint numbers are cached in ``label_steps.json`` beside
its checkpoints, so an interrupted study resumes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.transfer.measure import GT_SEED
from benchmarks.transfer.report import COPY_RATE_RULE, replay
from benchmarks.transfer.runs import CACHE, checkpoint, datamodule, parse_spec, run_dir
from memcallback.core import ProbeConfig
from memcallback.diffusion import ddim_sample
from memcallback.measure.analysis import probe_noise
from memcallback.measure.ground_truth import copy_rate_lower_bound, memorization_labels

#: the reference sampler steps (the labels cached by the transfer measurement)
REFERENCE_STEPS = 50


def label_checkpoints(text: str, steps: list[int], cache: Path) -> list[dict[str, Any]]:
    """Per checkpoint of one run: the copy labels at each of ``steps`` against the cached DDIM-50 ones."""
    probe = parse_spec(text, 3000, 250)
    path = run_dir(probe, cache) / "label_steps.json"
    rows: list[dict[str, Any]] = json.loads(path.read_text()) if path.exists() else []
    measured = torch.load(run_dir(probe, cache) / "measured.pt", weights_only=False)
    done = {(row["step"], row["K"]) for row in rows}
    data = datamodule(probe)
    train = data.unique_train_data()
    shape = tuple(train.shape[1:])
    config = ProbeConfig()
    gt_noise = probe_noise(len(measured[0]["gt_copied"]), shape, GT_SEED)
    probe_noise_ = probe_noise(config.num_samples, shape, config.seed)
    for row in measured:
        todo = [k for k in steps if (row["step"], k) not in done]
        if not todo:
            continue
        model = checkpoint(probe, row["step"], shape, cache)
        for k in todo:
            with torch.no_grad():
                gt = memorization_labels(ddim_sample(model, gt_noise, k).sample, train).copied
                probes = memorization_labels(ddim_sample(model, probe_noise_, k).sample, train).copied
            reference, reference_probes = row["gt_copied"].bool(), row["probe_copied"].bool()
            rows.append({"step": row["step"], "K": k, "rate": gt.float().mean().item(),
                         "reference_rate": reference.float().mean().item(),
                         "agreement": (gt == reference).float().mean().item(),
                         "probe_copies": int(probes.sum()), "reference_probe_copies": int(reference_probes.sum()),
                         "num_probes": probes.numel()})
            path.write_text(json.dumps(rows))
            last = rows[-1]
            print(f"{text} step {row['step']} K={k}: rate {last['rate']:.3f} vs {last['reference_rate']:.3f}, "
                  f"agreement {last['agreement']:.3f}, probe copies {last['probe_copies']} vs "
                  f"{last['reference_probe_copies']}", flush=True)
    return rows


def stop_step(series: list[tuple[int, int, int]]) -> int | None:
    """The step at which the default copy-rate stop fires on ``(step, copies, n)`` checks in order."""
    fired = replay([copy_rate_lower_bound(copies, n) for _, copies, n in series], COPY_RATE_RULE)
    return None if fired is None else series[fired][0]


def summary(text: str, rows: list[dict[str, Any]], k: int) -> str:
    """One table row: run, ``K``, worst rate shortfall and excess, lowest agreement, the stops at ``K`` and 50."""
    mine = sorted((r for r in rows if r["K"] == k), key=lambda r: r["step"])
    diffs = [r["rate"] - r["reference_rate"] for r in mine]
    at_k = stop_step([(r["step"], r["probe_copies"], r["num_probes"]) for r in mine])
    at_ref = stop_step([(r["step"], r["reference_probe_copies"], r["num_probes"]) for r in mine])
    peak = max(mine, key=lambda r: r["reference_rate"])
    return (f"| {text} | {k} | {len(mine)} | {max(0.0, -min(diffs)):.3f} | {max(0.0, max(diffs)):.3f} | "
            f"{min(r['agreement'] for r in mine):.3f} | {peak['reference_rate']:.3f} -> {peak['rate']:.3f} | "
            f"{at_ref} | {at_k} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="FAMILY:mem|gen[:SEED] of the transfer study, measured")
    parser.add_argument("--steps", nargs="+", type=int, default=[10, 20], help="sampler steps K to test")
    parser.add_argument("--cache", type=Path, default=CACHE)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    table = []
    for text in args.runs:
        rows = label_checkpoints(text, args.steps, args.cache)
        table += [summary(text, rows, k) for k in args.steps]
    print(f"\n| run | K | checkpoints | largest shortfall of the copy rate vs DDIM-{REFERENCE_STEPS} | largest excess "
          f"| lowest label agreement | copy rate at its peak, DDIM-{REFERENCE_STEPS} -> K | default stop, "
          f"DDIM-{REFERENCE_STEPS} labels | default stop, K labels |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(table))
    print(f"\n_{time.perf_counter() - started:.0f} s wall, torch {torch.__version__}, 1 thread._")


if __name__ == "__main__":
    main()
