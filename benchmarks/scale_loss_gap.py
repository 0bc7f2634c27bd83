"""The relative loss gap (``memcallback.measure.loss_gap``) on every cached checkpoint of the patch and digits runs.

Per checkpoint: ``LOSS_GAP_IMAGES`` training images (cycled when ``N`` is smaller) and as many held-out images,
``ProbeConfig().loss_gap_levels`` noise levels, probe seed 0 — what the callback measures with
``probes.loss_gap_images = LOSS_GAP_IMAGES``. The mean errors per noise level are cached in the run folder
(``loss_gap.json``); the gap is computed from them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from memcallback.diffusion import DiffusionModel
from memcallback.measure.loss_gap import loss_gap, relative_gap

#: training and held-out images of each kind
LOSS_GAP_IMAGES = 64
#: noise levels spread over the schedule
LOSS_GAP_LEVELS = 10


def loss_gap_history(folder: Path, steps: list[int], load: Callable[[int], DiffusionModel], train: Tensor,
                     heldout: Tensor) -> list[dict]:
    """``[{step, timesteps, train, heldout, gap}]`` per checkpoint (``train``/``heldout``: the mean error per noise
    level), cached in ``folder/loss_gap.json``."""
    path = folder / "loss_gap.json"
    cached = {row["step"]: row for row in json.loads(path.read_text())} if path.exists() else {}
    if all(s in cached for s in steps):
        return [cached[s] for s in steps]
    torch.set_num_threads(1)
    n = LOSS_GAP_IMAGES
    train_x, heldout_x = train[torch.arange(n) % len(train)], heldout[:n]
    for step in steps:
        if step not in cached:
            result = loss_gap(load(step), train_x, heldout_x, num_levels=LOSS_GAP_LEVELS, seed=0)
            cached[step] = {"step": step, "timesteps": result.timesteps.tolist(),
                            "train": result.train.mean(dim=0).tolist(), "heldout": result.heldout.mean(dim=0).tolist(),
                            "gap": result.gap}
    path.write_text(json.dumps([cached[s] for s in sorted(cached)]))
    return [cached[s] for s in steps]


def gap_of(row: dict) -> float:
    """The relative loss gap of one cached row."""
    return relative_gap(torch.tensor(row["train"]), torch.tensor(row["heldout"]))
