"""What the callback adds to training at its defaults, with and without the cost governor, from costs measured side
by side in one run, projected over a training run by the governor's own policy.

    python -m benchmarks.overhead.governed [--cases digits patches16 unet32 cifar35m] [--repeats 3] [--device cpu]
                                           [--full-size]

For each case, alternating ``--repeats`` times so machine noise hits every part alike, it measures one training step
(forward, backward, Adam at the case's batch), the probe part of a check (DDIM sampling and the sharpness
measurement at the callback's defaults: DDIM-50, Krylov budget 26, 8 trace probes) on ``probes`` probes and the
loss gap on ``images`` training and as many held-out images (10 noise levels). On the CPU the parts grow linearly
with the rows they process, so a check of ``m`` probes and ``l`` images is modelled as ``m p + l g`` from the
per-probe and per-image medians (stated as an extrapolation when fewer than 64 were timed). It then runs
:class:`~memcallback.core.governor.CostGovernor` (the same object the callback uses) over the case's run, a check
every 250 steps plus the baseline, and reports what the checks add to the training time (check seconds /
training seconds) ungoverned and governed (with a loss-gap monitor the baseline is light and the first full check
waits for its predicted cost, :func:`~memcallback.core.governor.predicted_probe_cost`), with the spread over the
repeats (min - max of the projection from each repeat's costs) and what the governor cut.

Cases (weights untrained: with a fixed Krylov budget and fixed DDIM steps a check's cost does not depend on them):

* ``digits``: the digits demo (``ResidualMLP`` 256x3, 8x8, batch 128, dense Hessian path), 8000 steps, both
  monitors (the loss gap is the default with held-out data).
* ``patches16``: ``experiment=patches_memorize`` (``SmallUNet`` base 32, 3x16x16, batch 32), 4000 steps, the stop
  rule on the loss gap: light checks between full ones.
* ``unet32``: ``SmallUNet`` 3x32x32 (base 32, mults [1, 2]), batch 128, 4000 steps, both monitors.
* ``cifar35m``: the DDPM-CIFAR10 ``UNet2DModel`` (35.7 M) through ``DiffusersModel``, batch 128 (timed at batch 8
  on the CPU and scaled x16), 4000 steps, both monitors; the probe part timed on 2 probes, the loss gap on 2 images.

``--full-size`` (for a GPU, where the cost does not grow linearly with the rows) times every case at 64 probes, 64
images and its own batch.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from benchmarks.cost import models
from benchmarks.cost.units import synchronizer, train_step_seconds
from memcallback.core import GovernorConfig, MeasureRequest, ProbeConfig, ReferenceImages, measure
from memcallback.core.governor import CostGovernor, Tier, predicted_probe_cost
from memcallback.measure.analysis import probe_noise, resolve_timesteps
from memcallback.measure.loss_gap import NUM_LEVELS, loss_noise
from memcallback.measure.sharpness import SharpnessConfig

EVERY = 250  # the callback's default every_n_train_steps
DEFAULTS = ProbeConfig()


@dataclass(frozen=True)
class Case:
    """One model at its training settings."""

    build: Callable[[], nn.Module]
    batch: int
    batch_timed: int  # the batch a training step is timed at (scaled linearly to ``batch``)
    steps: int
    probes: int  # probes timed
    images: int  # loss-gap images of each kind timed
    monitors: tuple[str, ...]  # "score" (cut probes) and/or "loss_gap" (light checks)


def patches16() -> nn.Module:
    from memcallback.app.models import DiffusionModule, SmallUNet

    return DiffusionModule(SmallUNet((3, 16, 16), base_channels=32, channel_mults=(1, 2)), lr=1e-3)


CASES = {
    "digits": Case(models.mlp_digits, 128, 128, 8000, 64, 64, ("score", "loss_gap")),
    "patches16": Case(patches16, 32, 32, 4000, 16, 64, ("loss_gap",)),
    "unet32": Case(models.unet32, 128, 32, 4000, 8, 32, ("score", "loss_gap")),
    "cifar35m": Case(models.ddpm_cifar10, 128, 8, 4000, 2, 2, ("score", "loss_gap")),
}


def part_seconds(model: nn.Module, probes: int, images: int, sync: Callable[[], None]) -> tuple[float, float]:
    """Seconds of the probe part of a default check on ``probes`` probes, and of the loss gap on ``images``."""
    shape = tuple(model.data_shape)
    timesteps = resolve_timesteps(model, DEFAULTS.sigmas, DEFAULTS.timesteps)
    device = next(model.parameters()).device
    request = MeasureRequest(noise=probe_noise(probes, shape, DEFAULTS.seed).to(device), timesteps=timesteps,
                             num_sampling_steps=DEFAULTS.num_sampling_steps, seed=DEFAULTS.seed,
                             sharpness=SharpnessConfig())
    sync()
    start = time.perf_counter()
    measure(model, request)
    sync()
    probe_part = time.perf_counter() - start
    generator = torch.Generator().manual_seed(0)
    train, heldout = (torch.randn((images, *shape), generator=generator).to(device) for _ in range(2))
    light = MeasureRequest(noise=request.noise, timesteps=timesteps, num_sampling_steps=1, seed=0,
                           sharpness=SharpnessConfig(), measure_probes=False,
                           loss_reference=ReferenceImages(train, heldout, loss_noise(images, shape, NUM_LEVELS, 0)))
    sync()
    start = time.perf_counter()
    measure(model, light)
    sync()
    return probe_part, time.perf_counter() - start


@dataclass(frozen=True)
class Projection:
    """What the checks add over one run, and what the governor measured."""

    overhead: float  # check seconds / training seconds
    full: int  # checks that measured every probe (the baseline included when it did)
    light: int  # checks of the loss gap alone
    last: Tier  # what the last check measured


def predicted(model: nn.Module) -> float:
    """The cost of a probe in loss-gap images that the watch predicts for ``model`` at the defaults."""
    shape = tuple(model.data_shape)
    products = SharpnessConfig().products_per_sample(math.prod(shape))
    timesteps = resolve_timesteps(model, DEFAULTS.sigmas, DEFAULTS.timesteps)
    return predicted_probe_cost(DEFAULTS.num_samples, DEFAULTS.num_sampling_steps, len(timesteps), products, 0,
                                NUM_LEVELS)


def project(config: GovernorConfig, light_monitor: bool, step_seconds: float, per_probe: float, per_image: float,
            steps: int, probe_cost: float) -> Projection:
    """The governor's checks over ``steps`` steps (a check every ``EVERY`` plus the baseline) at these costs, the
    first full one predicted at ``probe_cost`` loss-gap images a probe, as the watch does."""
    governor = CostGovernor(config, DEFAULTS.num_samples, DEFAULTS.loss_gap_images, 1, light_monitor, probe_cost)

    def cost(tier: Tier) -> float:
        return tier.probes * per_probe + tier.images * per_image

    tier = governor.first()
    governor.record(tier, cost(tier))
    full, light = int(tier.probes == DEFAULTS.num_samples), int(tier.probes == 0)
    for _ in range(steps // EVERY):
        governor.add_training(EVERY * step_seconds)
        tier = governor.choose()
        governor.record(tier, cost(tier))
        full += tier.probes == DEFAULTS.num_samples
        light += tier.probes == 0
    return Projection(governor.overhead, full, light, tier)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=sorted(CASES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--full-size", action="store_true", help="time 64 probes, 64 images, the case's batch")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = synchronizer(device)
    started = time.perf_counter()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, device {device}; "
          f"a check every {EVERY} steps plus the baseline; callback defaults {DEFAULTS.num_samples} probes, DDIM-"
          f"{DEFAULTS.num_sampling_steps}, Krylov budget {SharpnessConfig().krylov_steps}, loss gap on "
          f"{DEFAULTS.loss_gap_images} + {DEFAULTS.loss_gap_images} images x {NUM_LEVELS} levels; governor "
          f"{GovernorConfig()}\n")
    print("| case | monitor | batch | steps | train step s | full check s (= steps) | light check s | ungoverned "
          "overhead | governed overhead [spread] | governed: full / light checks, last check measured |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.cases:
        case = CASES[name]
        if args.full_size:
            case = replace(case, batch_timed=case.batch, probes=DEFAULTS.num_samples, images=DEFAULTS.loss_gap_images)
        torch.manual_seed(0)
        model = case.build().to(device).eval()
        network = model.network if hasattr(model, "network") else model.unet
        step_s, probe_s, image_s = [], [], []
        for _ in range(args.repeats):  # alternating, so noise hits every part alike
            step_s.append(train_step_seconds(model, network, case.batch_timed, 3, sync) * case.batch
                          / case.batch_timed)
            probes, images = part_seconds(model, case.probes, case.images, sync)
            probe_s.append(probes / case.probes)
            image_s.append(images / case.images)
        step, per_probe, per_image = (statistics.median(v) for v in (step_s, probe_s, image_s))
        full = DEFAULTS.num_samples * per_probe + DEFAULTS.loss_gap_images * per_image
        light = DEFAULTS.loss_gap_images * per_image
        probe_cost = predicted(model)
        for monitor in case.monitors:
            light_monitor = monitor == "loss_gap"
            ungoverned = project(GovernorConfig(max_overhead=None), light_monitor, step, per_probe, per_image,
                                 case.steps, probe_cost)
            governed = project(GovernorConfig(), light_monitor, step, per_probe, per_image, case.steps, probe_cost)
            spread = [project(GovernorConfig(), light_monitor, s, p, g, case.steps, probe_cost).overhead
                      for s, p, g in zip(step_s, probe_s, image_s, strict=True)]
            last = governed.last
            print(f"| {name} | {monitor} | {case.batch} | {case.steps} | {step:.3f} | {full:.2f} ({full / step:.1f}) "
                  f"| {light:.2f} | {ungoverned.overhead:.1%} | **{governed.overhead:.1%}** [{min(spread):.1%} - "
                  f"{max(spread):.1%}] | {governed.full} / {governed.light}, {last.probes} probes + {last.images} "
                  "images |", flush=True)
        timed = [f"{case.probes} probes" + ("" if case.probes >= DEFAULTS.num_samples else " (linear to 64)"),
                 f"{case.images} images" + ("" if case.images >= DEFAULTS.loss_gap_images else " (linear to 64)")]
        if case.batch_timed != case.batch:
            timed.append(f"train step at batch {case.batch_timed} (linear to {case.batch})")
        print(f"|  | timed: {', '.join(timed)}; per probe {per_probe:.3f} s, per image {per_image:.4f} s: a probe "
              f"costs {per_probe / per_image:.2f} images (predicted before the first full check: {probe_cost:.2f}) "
              "|||||||||")
    print(f"\n_{time.perf_counter() - started:.0f} s wall._")


if __name__ == "__main__":
    main()
