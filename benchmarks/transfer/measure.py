"""Measure every checkpoint of a transfer-study run with the callback's defaults as shipped, and cache it.

The checkpoints of a run go, in order, through one ``MemorizationWatch`` built with nothing but the data
(``MemorizationWatch(stop=StopConfig(stop_training=False))``, ungoverned, set up as ``MemorizationMonitor`` does:
``train_data=unique_train_data()``, ``heldout_data=heldout_data()``), so every logged value, flag and stop decision
is the callback's own. A measurement function around the default one (the ``measure_fn`` seam) keeps the per-probe
scores, copy labels and null scores. Beside it, per checkpoint:

- ground truth: ``--gt-samples`` (default ``GT_SAMPLES``) DDIM-50 samples from probe seed 1 (not the callback's
  seed 0), each labelled a copy when ``d1 / d2 < 1/3`` against the run's distinct training images;
- the flag's test (the watch's own copy flag) applied to those samples too, a larger sample of its rate;
- quality: the held-out denoising loss (``val/loss`` of the app's module on fixed noise and timesteps) and a
  Frechet distance between those samples and the whole family in the space of its first ``PCA_DIMS`` principal
  components (a pixel-space FID: no network weights to download).

    python -m benchmarks.transfer.measure faces:mem faces:gen
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import linalg
from torch import Tensor

from benchmarks.scale.runs import denoising_loss
from benchmarks.transfer.runs import CACHE, RunSpec, checkpoint, datamodule, parse_spec, run_arguments, run_dir
from memcallback.core import GovernorConfig, MemorizationWatch, StopConfig
from memcallback.core.measurement import Measurement, MeasureRequest, measure
from memcallback.diffusion import DiffusionModel, ddim_sample
from memcallback.measure.analysis import probe_noise
from memcallback.measure.ground_truth import memorization_labels

GT_SAMPLES = 256
GT_SEED = 1
PCA_DIMS = 16


class Recorder:
    """The default measurement, keeping what the logged scalars summarize: per-probe scores and labels, null scores."""

    def __init__(self) -> None:
        self.last: Measurement | None = None

    def __call__(self, model: DiffusionModel, request: MeasureRequest) -> Measurement:
        self.last = measure(model, request)
        return self.last


class Features:
    """The first ``PCA_DIMS`` principal components of a family's images, and its Frechet statistics there."""

    def __init__(self, pool: Tensor) -> None:
        flat = pool.flatten(1).double()
        self.mean = flat.mean(dim=0)
        _, _, v = torch.linalg.svd(flat - self.mean, full_matrices=False)
        self.basis = v[:PCA_DIMS].T
        self.mu, self.cov = self.stats(pool)

    def stats(self, images: Tensor) -> tuple[np.ndarray, np.ndarray]:
        z = ((images.flatten(1).double() - self.mean) @ self.basis).numpy()
        return z.mean(axis=0), np.cov(z, rowvar=False)

    def frechet(self, images: Tensor) -> float:
        """``||mu_a - mu_b||^2 + tr(C_a + C_b - 2 (C_a C_b)^{1/2})``."""
        mu, cov = self.stats(images)
        root = linalg.sqrtm(cov @ self.cov).real
        return float(((mu - self.mu) ** 2).sum() + np.trace(cov + self.cov - 2 * root))


def measure_run(spec: RunSpec, cache: Path = CACHE, gt_samples: int = GT_SAMPLES) -> list[dict[str, Any]]:
    """Every checkpoint of ``spec`` saved so far, cached as ``measured.pt`` (a run measured before is read back and
    continued, so a run still training can be measured as it goes)."""
    torch.set_num_threads(1)
    path = run_dir(spec, cache) / "measured.pt"
    rows: list[dict[str, Any]] = torch.load(path, weights_only=False) if path.exists() else []
    done = {row["step"] for row in rows}
    saved = [step for step in spec.grid if (run_dir(spec, cache) / f"step{step:06d}.pt").exists()]
    todo = [step for step in saved[:len(saved) if saved == spec.grid[:len(saved)] else 0] if step not in done]
    if not todo:
        return rows
    dm = datamodule(spec)
    train, heldout = dm.unique_train_data(), dm.heldout_data()
    shape = tuple(train.shape[1:])
    features = Features(torch.cat([dm.train_data, heldout]) if not spec.memorize else dm.load()[0])
    recorder = Recorder()
    # ungoverned: a replay has no training time between its checks (benchmarks/overhead/stop_replay.py runs the
    # governor on these runs)
    watch = MemorizationWatch(stop=StopConfig(stop_training=False), measure_fn=recorder,
                              governor=GovernorConfig(max_overhead=None))
    watch.setup(checkpoint(spec, 0, shape, cache), train_data=train, heldout_data=heldout)
    copies = watch.setup_state.copy_flag  # the flag's test, applied to the ground-truth samples too
    if rows:  # replay the decisions so far: the watch's state is what the checks left
        watch.load_state_dict(rows[-1]["watch_state"])
    for step in todo:
        module = checkpoint(spec, step, shape, cache)
        start = time.perf_counter()
        result = watch.check(module, step)
        check_s = time.perf_counter() - start
        report, measured = result.report, recorder.last
        samples = ddim_sample(module, probe_noise(gt_samples, shape, GT_SEED), 50).sample
        labels = memorization_labels(samples, train)
        rows.append({
            "step": step, "scalars": dict(result.scalars), "fired": result.fired, "safe": result.safe,
            "check_s": check_s, "monitor": watch.monitor,
            "probe_score": report.primary.memorization_score.double().cpu(),
            "probe_flagged": report.primary.flagged.cpu(),
            "probe_copied": report.labels.copied.cpu(), "probe_ratio": report.labels.distance_ratio.cpu(),
            "null_score": None if measured.null is None else measured.null.memorization_score.double().cpu(),
            "gt_copied": labels.copied.cpu(), "gt_ratio": labels.distance_ratio.cpu(),
            "gt_flagged": None if copies is None else copies(labels.distance_ratio).cpu(),
            "heldout_loss": denoising_loss(module, heldout), "frechet": features.frechet(samples),
            "watch_state": watch.state_dict(),
        })
        torch.save(rows, path)
        s = result.scalars
        print(f"{spec.label} step {step}: loss gap {s.get('loss_gap', float('nan')):+.3f} score {s['score']:.4f} "
              f"flagged {s['flagged_fraction']:.2f} (ratio < {s.get('flag_ratio', float('nan')):.3f}) "
              f"probe nn {s['nn_rate']:.3f} (lower {s['nn_rate_lower']:.3f}) gt nn {labels.rate:.3f} "
              f"fired {result.fired} ({check_s:.0f} s check)", flush=True)
    return rows


def main() -> None:
    parser = run_arguments(__doc__)
    parser.add_argument("--gt-samples", type=int, default=GT_SAMPLES, help="ground-truth samples per checkpoint")
    args = parser.parse_args()
    for text in args.runs:
        spec = parse_spec(text, args.steps, args.every)
        rows = measure_run(spec, args.cache, args.gt_samples)
        (run_dir(spec, args.cache) / "measured.json").write_text(json.dumps(
            [{"step": r["step"], **r["scalars"]} for r in rows]))


if __name__ == "__main__":
    main()
