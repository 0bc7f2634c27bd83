"""Sharpness at noised real images, the reference a probe's score can be compared with.

The level of the top_mu score depends on the model as well as on memorization: a generalizing UNet also
grows sharper as it trains (``docs/scale/normalization.md``). The same statistic at *real* images noised to
the same level gives two references measured on the same network at the same check:

- held-out images ``x_t = alpha_t x_val + sigma_t z``: where a generalizing model is as sharp as at its own
  samples, and a memorizing one is not (held-out images lie between its memorized peaks);
- training images: sharp under a memorizing model (its peaks), as flat as held-out images under a
  generalizing one. Only scalars leave this module; the images stay on the machine.

Per checkpoint: ``REFERENCE_STATES`` states each (training images cycled when ``N`` is smaller), the same fixed
noise for both, measured by :func:`memcallback.measure.sharpness_gap` with ``GAP_SHARPNESS`` (the top_mu score, k=8),
cached in ``<run>/reference/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from benchmarks.scale.measure import SIGMA, top_mu_score
from benchmarks.scale.runs import RunSpec, checkpoint, datamodule, run_dir
from benchmarks.validation.gap import GAP_IMAGES, GAP_SHARPNESS
from memcallback.measure import sharpness_gap

REFERENCE_STATES = 64
REFERENCE_SEED = 3


def reference_checkpoint(cache: Path, spec: RunSpec, step: int, sigma: float = SIGMA) -> dict[str, Any]:
    """Per-state ``mu`` (``[n, k]``) and every per-sample scalar of ``SharpnessStats`` at noised training and
    held-out images of one checkpoint: :func:`memcallback.measure.sharpness_gap` with ``GAP_SHARPNESS``, cached."""
    path = run_dir(cache, spec) / "reference" / f"step{step:06d}_{REFERENCE_STATES}_sigma{sigma:g}.pt"
    if path.exists():
        cached = torch.load(path, weights_only=False)
        if "scalars" in cached["train"]:
            return cached
    torch.set_num_threads(1)
    module = checkpoint(cache, spec, step)
    dm = datamodule(spec)
    train_x = dm.unique_train_data()
    t = module.schedule.timestep_for_sigma(sigma)
    result = sharpness_gap(module, train_x[torch.arange(REFERENCE_STATES) % len(train_x)],
                           dm.val_data[:REFERENCE_STATES], t, GAP_SHARPNESS, seed=REFERENCE_SEED)
    out: dict[str, Any] = {"step": step, "timestep": t, "sigma": module.schedule.sigma(t, torch.float64).item()}
    for name, stats in (("train", result.train), ("val", result.heldout)):
        out[name] = {"mu": stats.mu.detach().numpy(),
                     "scalars": {k: v.detach().numpy() for k, v in stats.scalars().items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, path)
    return out


def reference_score(reference: dict[str, Any], images: str) -> float:
    """Mean score at the first ``GAP_IMAGES`` (the patch experiments' count) noised ``"train"`` or ``"val"``
    (held-out) images of one checkpoint's reference."""
    return float(top_mu_score(reference[images]["mu"][:GAP_IMAGES]).mean())


def reference_gap(reference: dict[str, Any]) -> float:
    """The sharpness gap of one checkpoint's reference: :func:`reference_score` of the training images minus that
    of the held-out images."""
    return reference_score(reference, "train") - reference_score(reference, "val")
