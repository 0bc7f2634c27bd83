"""The relative loss gap (``memcallback.measure.loss_gap``) on every cached checkpoint of the patch and digits runs.

Per checkpoint: ``LOSS_GAP_IMAGES`` training images and as many held-out images, ``NUM_LEVELS`` noise levels, noise
seed 0. Two selections of the images: ``"first"``, the pre-registered one of docs/scale/loss_gap.md (the first
training images, cycled when ``N`` is smaller, and the first held-out images), and ``"random"``, what the callback
measures with ``probes.loss_gap_images = LOSS_GAP_IMAGES`` since the test (seeded random rows,
``memcallback.core.sample_rows``). The mean errors per noise level are cached in the run folder
(``loss_gap_<selection>.json``); the gap is computed from them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from benchmarks.scale.runs import RunSpec, checkpoint, datamodule, run_dir
from benchmarks.validation.runs import CHECK_EVERY
from benchmarks.validation.runs import RunSpec as DigitsSpec
from benchmarks.validation.runs import checkpoint as digits_checkpoint
from benchmarks.validation.runs import datamodule as digits_datamodule
from benchmarks.validation.runs import run_dir as digits_dir
from memcallback.core import ProbeConfig, StopConfig, StopRule, sample_rows
from memcallback.diffusion import DiffusionModel
from memcallback.measure.loss_gap import NUM_LEVELS, loss_gap, relative_gap

#: training and held-out images of each kind
LOSS_GAP_IMAGES = 64
#: how the images are chosen: pre-registered, then as the callback does
SELECTIONS = ("first", "random")
#: the rule under test, calibrated on the 16x16 seed-1 runs (docs/scale/loss_gap.md)
LOSS_GAP_RULE = StopConfig(monitor="memorization/loss_gap", threshold=0.25, min_delta=0.0, patience=1)


def select(train: Tensor, heldout: Tensor, selection: str) -> tuple[Tensor, Tensor]:
    """``LOSS_GAP_IMAGES`` training and held-out images chosen by ``selection`` (see the module docstring)."""
    n, seed = LOSS_GAP_IMAGES, ProbeConfig().seed
    if selection == "first":
        return train[torch.arange(n) % len(train)], heldout[:n]
    return train[sample_rows(len(train), n, seed)], heldout[sample_rows(len(heldout), n, seed + 1)]


def loss_gap_history(folder: Path, steps: list[int], load: Callable[[int], DiffusionModel], train: Tensor,
                     heldout: Tensor, selection: str) -> list[dict]:
    """``[{step, timesteps, train, heldout, gap}]`` per checkpoint (``train``/``heldout``: the mean error per noise
    level), cached in ``folder/loss_gap_<selection>.json``."""
    path = folder / f"loss_gap_{selection}.json"
    cached = {row["step"]: row for row in json.loads(path.read_text())} if path.exists() else {}
    if all(s in cached for s in steps):
        return [cached[s] for s in steps]
    torch.set_num_threads(1)
    train_x, heldout_x = select(train, heldout, selection)
    for step in steps:
        if step not in cached:
            result = loss_gap(load(step), train_x, heldout_x, num_levels=NUM_LEVELS, seed=ProbeConfig().seed)
            cached[step] = {"step": step, "timesteps": result.timesteps.tolist(),
                            "train": result.train.mean(dim=0).tolist(), "heldout": result.heldout.mean(dim=0).tolist(),
                            "gap": result.gap}
    path.write_text(json.dumps([cached[s] for s in sorted(cached)]))
    return [cached[s] for s in steps]


def gap_of(row: dict) -> float:
    """The relative loss gap of one cached row."""
    return relative_gap(torch.tensor(row["train"]), torch.tensor(row["heldout"]))


def patch_gaps(cache: Path, spec: RunSpec, steps: list[int], selection: str) -> list[tuple[int, float]]:
    """``(step, loss gap)`` of a patch run at ``steps``."""
    dm = datamodule(spec)
    rows = loss_gap_history(run_dir(cache, spec), steps, lambda s: checkpoint(cache, spec, s), dm.unique_train_data(),
                            dm.heldout_data(), selection)
    return [(row["step"], gap_of(row)) for row in rows]


def digits_gaps(cache: Path, spec: DigitsSpec, selection: str) -> list[tuple[int, float]]:
    """``(step, loss gap)`` of a digits run at every ``CHECK_EVERY`` steps, step 0 included."""
    dm = digits_datamodule(spec.num_train)
    rows = loss_gap_history(digits_dir(cache, spec), list(range(0, spec.max_steps + 1, CHECK_EVERY)),
                            lambda s: digits_checkpoint(cache, spec, s), dm.unique_train_data(), dm.heldout_data(),
                            selection)
    return [(row["step"], gap_of(row)) for row in rows]


def rule_stop(gaps: list[tuple[int, float]]) -> int | None:
    """Where ``LOSS_GAP_RULE`` fed every check's gap, the step-0 baseline included, stops (``None``: never)."""
    rule = StopRule(LOSS_GAP_RULE)
    return next((step for step, gap in gaps if rule.update(gap)), None)


