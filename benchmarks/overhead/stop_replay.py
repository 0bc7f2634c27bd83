"""Does the cost governor keep the stop in time? The transfer study's cached runs replayed through two watches, one
ungoverned and one at the defaults, checkpoint by checkpoint.

    python -m benchmarks.overhead.stop_replay faces:mem textures:mem [--monitor loss_gap nn_rate_lower score]

Each run's checkpoints (every 250 steps, ``benchmarks/transfer/runs.py``) are measured in order by a
:class:`~memcallback.core.MemorizationWatch` with ``GovernorConfig(max_overhead=None)`` and by one with the default
governor, both with the run's training and held-out images (the callback's ``ground_truth=True``), or with its
training images only for ``nn_rate_lower`` (the default stop without held-out data, which then measures no loss gap
either). The watches' clock is the wall clock plus the run's own training time between checkpoints (``train_s`` of
its ``run.json`` spread over its steps), so the governor decides on the check times measured here against the
training time the run took. Monitors: ``loss_gap``, ``nn_rate_lower`` and ``score`` (``StopConfig(monitor=...)``,
threshold and min_delta as calibrated for each, ``memcallback.core.CALIBRATED_RULES``). Prints, per run and monitor,
the step at which each watch's rule fired, the governed watch's full checks (every probe, sharpness measured) and how
many of them lie between the two stops (the criterion: the governed stop is at most one full check later), the probe
counts its checks sampled, and the governed overhead.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from benchmarks.transfer.runs import CACHE, checkpoint, datamodule, parse_spec, run_dir
from memcallback.core import GovernorConfig, MemorizationWatch, StopConfig
from memcallback.measure import names

#: the calibrated rule of each monitor (``memcallback.core.CALIBRATED_RULES``)
STOPS = {key: StopConfig(monitor=names.PREFIX + key) for key in (names.LOSS_GAP, names.NN_RATE_LOWER, names.SCORE)}
#: the monitor replayed as a user without held-out data has it
WITHOUT_HELDOUT = names.NN_RATE_LOWER


class ReplayClock:
    """The wall clock plus the training time the replayed run spent between checkpoints."""

    def __init__(self) -> None:
        self.trained = 0.0

    def __call__(self) -> float:
        return time.perf_counter() + self.trained


def replay(text: str, monitor: str, cache: Path) -> str:
    """One table row: the stops of the ungoverned and the governed watch on one run."""
    probe = parse_spec(text, 3000, 250)
    record = json.loads((run_dir(probe, cache) / "run.json").read_text())
    spec = parse_spec(text, max(record["saved"]), 250)
    data = datamodule(spec)
    shape = tuple(data.data_shape)
    interval = record["train_s"] / spec.steps * spec.every
    watches, clocks = {}, {}
    for name, governor in (("ungoverned", GovernorConfig(max_overhead=None)), ("governed", GovernorConfig())):
        clocks[name] = ReplayClock()
        watches[name] = MemorizationWatch(every_n_steps=spec.every, stop=STOPS[monitor], governor=governor,
                                          clock=clocks[name])
        watches[name].setup(checkpoint(spec, 0, shape, cache), train_data=data.unique_train_data(),
                            heldout_data=None if monitor == WITHOUT_HELDOUT else data.heldout_data())
    for step in sorted(record["saved"]):
        model = checkpoint(spec, step, shape, cache)
        for name, watch in watches.items():
            if watch.stopped_step is None:
                clocks[name].trained += interval if step > 0 else 0.0
                watch.check(model, step)
        if all(w.stopped_step is not None for w in watches.values()):
            break
    ungoverned, governed = (watches[n].stopped_step for n in ("ungoverned", "governed"))
    history = watches["governed"].history
    full = [int(row["step"]) for row in history  # every probe, sharpness measured (not a labels-only check)
            if row.get(names.PROBES_MEASURED) == watches["governed"].probes.num_samples
            and math.isfinite(row.get(names.SCORE, math.nan))]
    labelled = sorted({int(row[names.PROBES_MEASURED]) for row in history if row.get(names.PROBES_MEASURED)})
    between = "-" if ungoverned is None or governed is None else str(
        sum(ungoverned < s <= governed for s in full))
    return (f"| {spec.label} | {monitor} | {ungoverned} | {governed} | {between} | {full} | {labelled} | "
            f"{history[-1].get(names.OVERHEAD, math.nan):.1%} | {interval:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="FAMILY:mem|gen[:SEED] of the transfer study")
    parser.add_argument("--monitor", nargs="+", choices=sorted(STOPS), default=list(STOPS))
    parser.add_argument("--cache", type=Path, default=CACHE)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    print("| run | monitor | stop, ungoverned | stop, governed | governed full checks after the ungoverned stop, up "
          "to its own | governed full checks at | governed probes per check | governed overhead at the end | "
          "training s between checks |")
    print("|---|---|---|---|---|---|---|---|---|")
    for text in args.runs:
        for monitor in args.monitor:
            print(replay(text, monitor, args.cache), flush=True)
    print(f"\n_{time.perf_counter() - started:.0f} s wall, torch {torch.__version__}, 1 thread._")


if __name__ == "__main__":
    main()
