"""Cost of each signal of the realistic-scale study per check, side by side on one checkpoint, in training steps."""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from benchmarks.scale.loss_gap import LOSS_GAP_IMAGES, select
from benchmarks.scale.measure import NEAR_ZERO, SIGMA, SLQ_PROBES, SLQ_STEPS, near_zero_count, stable_rank
from benchmarks.scale.report import ScaleWriter
from benchmarks.scale.runs import BATCH, LR, RunSpec, build, checkpoint, datamodule, denoising_loss, parse_spec
from benchmarks.validation.gap import GAP_IMAGES, GAP_SHARPNESS
from benchmarks.validation.runs import fmt
from memcallback import analyze
from memcallback.diffusion import ddim_sample
from memcallback.measure import loss_gap, sharpness_gap
from memcallback.measure.analysis import measurement_mode, probe_noise
from memcallback.measure.loss_gap import NUM_LEVELS
from memcallback.measure.sharpness import SharpnessConfig


# --------------------------------------------------------------------------------------------------
def study_cost(args: argparse.Namespace, w: ScaleWriter) -> None:
    """Wall time of each signal per check, side by side on one checkpoint, in training steps."""
    torch.set_num_threads(1)
    spec = parse_spec(args.runs[0], args.steps, args.every, args.patch_size)
    module = checkpoint(args.cache, spec, spec.steps)
    dm = datamodule(spec)
    train_x = dm.unique_train_data()
    step_s = _step_seconds(spec, train_x)
    t = module.schedule.timestep_for_sigma(SIGMA)
    sigma = module.schedule.sigma(t, torch.float64).item()
    noise = probe_noise(64, module.data_shape, 1)

    def slq() -> None:
        with torch.no_grad():
            states = ddim_sample(module, noise, 50, record=[t]).trajectory[t]
        near_zero_count(module, states, t, sigma, 1)

    def sampling() -> None:
        with torch.no_grad(), measurement_mode(module):
            ddim_sample(module, noise, 50)

    n_ref = GAP_IMAGES
    parts = {
        "memorization score + every sharpness statistic: analyze(64 probes) at the SharpnessConfig defaults":
            lambda: analyze(module, noise=noise, config=SharpnessConfig()),
        "of which DDIM-50 sampling of the 64 probes": sampling,
        f"SLQ near-zero count (64 probes, DDIM + {SLQ_PROBES} probe x {SLQ_STEPS} Lanczos steps)": slq,
        f"validation loss ({len(dm.val_data)} held-out patches x 10 timesteps)":
            lambda: denoising_loss(module, dm.val_data),
        "train/val gap (validation loss + the same on <= 512 training patches)":
            lambda: (denoising_loss(module, dm.val_data), denoising_loss(module, train_x[:512])),
        "mean stable rank of the weights": lambda: stable_rank(module.network),
        f"sharpness gap ({n_ref} training + {n_ref} held-out patches, no sampling)":
            lambda: sharpness_gap(module, train_x[torch.arange(n_ref) % len(train_x)], dm.val_data[:n_ref], t,
                                  GAP_SHARPNESS),
        f"relative loss gap ({LOSS_GAP_IMAGES} training + {LOSS_GAP_IMAGES} held-out patches x {NUM_LEVELS} levels)":
            lambda: loss_gap(module, *select(train_x, dm.val_data, "random")),
    }
    rows = []
    for name, fn in parts.items():
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        sec = statistics.median(times)
        rows.append([name, fmt(sec, 3), fmt(sec / step_s, 1)])
    w.table(f"Cost of one check, median of 3, on the {spec.label} model at step {spec.steps}, against one training "
            f"step (batch {BATCH}: {1000 * step_s:.1f} ms, median of 3 x 20 steps); the CPU was shared with other "
            "jobs, so ratios are more reliable than seconds", ["signal", "s per check", "training steps"], rows)
    w.text(f"Near-zero curvature: |sigma^2 lambda| < {NEAR_ZERO}.\n")


def _step_seconds(spec: RunSpec, train_x: torch.Tensor) -> float:
    module = build(spec)
    optimizer = torch.optim.AdamW(module.network.parameters(), lr=LR)
    generator = torch.Generator().manual_seed(0)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(20):
            x0 = train_x[torch.randint(len(train_x), (BATCH,), generator=generator)]
            t = torch.randint(0, module.schedule.num_timesteps, (BATCH,), generator=generator)
            noise = torch.randn(x0.shape, generator=generator)
            x_t = module.schedule.add_noise(x0, noise, t)
            loss = F.mse_loss(module.network(x_t, t), module.target(x0, noise, t))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        times.append((time.perf_counter() - start) / 20)
    return statistics.median(times)
