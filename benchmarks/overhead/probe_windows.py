"""Would labelling fewer probes per check, rotated or pooled over checks, keep the copy-rate stop in time? The
transfer study's cached per-probe labels replayed through the default copy-rate rule.

    python -m benchmarks.overhead.probe_windows

Reads each run's ``measured.pt`` (``benchmarks/transfer/measure.py``: the callback's 64 probes labelled at every
checkpoint, ungoverned) and prints the step at which the default copy-rate stop (``nn_rate_lower`` past 0.01,
``CALIBRATED_RULES``) fires when each check labels:

- ``64``: every probe (the ungoverned stop);
- ``prefix m``: the first ``m`` probes (what the cost governor's cut measures);
- ``rotate m``: the ``j mod (64 / m)``-th block of ``m`` probes at the ``j``-th check;
- ``pool m``: that block, pooled with the blocks of the ``64 / m - 1`` checks before it (64 distinct probes over a
  window of checks; a bound on the window's mean rate, which under a rising rate is below the current one).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import Tensor

from benchmarks.transfer.label_steps import stop_step
from benchmarks.transfer.runs import CACHE

SIZES = (16, 32)


def schemes(labels: list[Tensor], m: int) -> dict[str, list[tuple[int, int]]]:
    """``(copies, n)`` per check under the prefix, rotating and pooled schemes of ``m`` probes a check."""
    blocks = len(labels[0]) // m
    block = [lab[(j % blocks) * m:(j % blocks + 1) * m] for j, lab in enumerate(labels)]
    pooled = [torch.cat(block[max(0, j - blocks + 1):j + 1]) for j in range(len(labels))]
    return {f"prefix {m}": [(int(lab[:m].sum()), m) for lab in labels],
            f"rotate {m}": [(int(b.sum()), m) for b in block],
            f"pool {m}": [(int(p.sum()), p.numel()) for p in pooled]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=CACHE)
    args = parser.parse_args()
    header = ["64"] + [f"{kind} {m}" for m in SIZES for kind in ("prefix", "rotate", "pool")]
    print("| run | " + " | ".join(header) + " |")
    print("|---|" + "---|" * len(header))
    for folder in sorted(p for p in args.cache.iterdir() if (p / "measured.pt").exists()):
        rows = torch.load(folder / "measured.pt", weights_only=False)
        steps, labels = [r["step"] for r in rows], [r["probe_copied"].bool() for r in rows]
        counts = {"64": [(int(lab.sum()), lab.numel()) for lab in labels]}
        for m in SIZES:
            counts |= schemes(labels, m)
        print(f"| {folder.name} | " + " | ".join(
            str(stop_step([(s, k, n) for s, (k, n) in zip(steps, counts[h], strict=True)])) for h in header) + " |")


if __name__ == "__main__":
    main()
