"""What one memorization check costs, part by part, and which cheaper settings keep the score: side by side.

    python -m benchmarks.cost.check_cost [--device cpu] [--probes 16] [--check-probes 64] [--cifar-probes 2]

Prints four markdown tables and a recommendation (progress goes to stderr):

1. **Unit costs** per model at the check's batch (``--check-probes`` rows): one forward, one symmetric product
   ``(J v + J^T v) / 2``, ``J v`` by double backward and by forward mode (``jacobian_operator(jvp="forward")``),
   one ``J^T v``, each in forward passes of the same batch; one training step (forward + backward + Adam) at
   batch 128. Models: the digits ``ResidualMLP`` (d = 64, dense path), ``SmallUNet`` 3x32x32 untrained and
   trained on 32x32 patches, and the DDPM-CIFAR10 ``UNet2DModel`` (35.7 M, random weights) through
   ``DiffusersModel`` (see ``benchmarks/cost/models.py``). On CPU the 35.7 M UNet is timed at
   ``--cifar-probes`` rows and scaled linearly to ``--check-probes``, its training step at batch 8 scaled to
   128 (the table says so).
2. **Settings** measured with the library's ``measure_sharpness`` on the trained SmallUNets (``--probes`` probes
   of each from ``probe_noise(seed=0)``, solver generator seed 1; the memorizing model gives nearest-neighbour
   positives): Jacobian products per sample per noise level (``J v`` or ``J^T v``: 1, ``S v``: 2), forward
   equivalents, the check's cost in training steps at ``--check-probes`` probes (modelled from the unit costs,
   and from the measured wall time), and the accuracy against the converged reference (Lanczos to relative
   residual 1e-6, no budget, on the DDIM-50 states): max per-sample ``|memorization_score - reference|`` on
   each model, the AUROC of the score against the nearest-neighbour label minus the reference's (pooled over
   both models' probes), and the error of ``effective_dim / d`` against a 64-probe trace.
3. **Score error by Krylov budget**: cold Lanczos on ``S`` on the same states, budget by budget (one run).
4. **The check before and after** (the settings before this issue vs the recommended ones) for every model.

Nothing here is tuned on detection numbers: the accuracy is against the converged reference on the same states.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field, replace

import torch

from benchmarks.cost import models as cost_models
from benchmarks.cost.candidates import (
    Setting,
    applications,
    budget_sweep,
    forward_equivalents,
    measure,
    sample_states,
    sampling_calls,
    train_steps,
)
from benchmarks.cost.units import UnitCosts, unit_costs
from memcallback.measure.analysis import probe_noise
from memcallback.measure.ground_truth import memorization_labels
from memcallback.measure.report import auroc
from memcallback.measure.sharpness import SharpnessConfig, SharpnessStats, memorization_score

SIGMA = 0.1
MAX_SCORE_ERROR = 0.02
MAX_AUROC_ERROR = 0.01
MAX_PRODUCTS = 40
MAX_TRAIN_STEPS = 12
REFERENCE = SharpnessConfig(solver="lanczos", krylov_steps=None, tol=1e-6, lanczos_iters=300, trace_probes=64,
                            min_eigenvalue=False)
BEFORE = Setting("before: Lanczos to tol 1e-3 (2 solves), trace 16 S, asym 4, DDIM-50",
                 SharpnessConfig(solver="lanczos", krylov_steps=None, tol=1e-3, trace_probes=16, asymmetry_probes=4),
                 symmetric_trace=True)
DEFAULT = SharpnessConfig()


def budget(steps: int = 26, product: str = "S", **kwargs) -> SharpnessConfig:
    return replace(DEFAULT, solver="lanczos", krylov_steps=steps, krylov_product=product, **kwargs)


SETTINGS = [
    BEFORE,
    Setting("library defaults now, warm", DEFAULT, warm=True),
    Setting("S budget 26 (2k+10) cold, trace 8", budget(26, trace_probes=8)),
    Setting("S budget 26 warm, deflated trace 8", budget(26, trace_probes=8, trace_estimator="deflated"), warm=True),
    Setting("JT budget 26 cold, trace 8", budget(26, "JT", trace_probes=8)),
    Setting("JT budget 26 warm, trace 8", budget(26, "JT", trace_probes=8), warm=True),
    Setting("JT budget 18 warm, trace 8", budget(18, "JT", trace_probes=8), warm=True),
    Setting("JT budget 26 warm, trace 4", budget(26, "JT", trace_probes=4), warm=True),
    Setting("JT budget 26 warm, trace 8, DDIM-25", budget(26, "JT", trace_probes=8), warm=True, sampling_steps=25),
    Setting("JT budget 26 warm, trace 8, DDIM-25, spectrum on 1/2", budget(26, "JT", trace_probes=8), warm=True,
            sampling_steps=25, probe_fraction=0.5),
    Setting("power, budget 26 (1 block iteration per end)", replace(DEFAULT, solver="power", krylov_steps=26),
            warm=True),
    Setting("power to tol 1e-3", replace(DEFAULT, solver="power", krylov_steps=None, tol=1e-3, lanczos_iters=480)),
]


@dataclass
class ModelRun:
    """One trained model's probes, states, labels and reference."""

    name: str
    model: torch.nn.Module
    previous: torch.nn.Module
    timestep: int
    noise: torch.Tensor
    states: dict[int, object]
    labels: dict[int, torch.Tensor]
    reference: SharpnessStats
    previous_vectors: dict[tuple, torch.Tensor] = field(default_factory=dict)
    previous_states: dict[int, torch.Tensor] = field(default_factory=dict)

    @property
    def sigma(self) -> float:
        return self.model.schedule.sigma(self.timestep, torch.float64).item()


def prepare(name: str, probes: int, device: torch.device, log) -> ModelRun:
    model, data = cost_models.trained(name, log, device=device)
    previous = cost_models.trained(name, log, previous=True, device=device)[0]
    model, previous = model.to(device), previous.to(device)
    timestep = model.schedule.timestep_for_sigma(SIGMA)
    noise = probe_noise(probes, model.data_shape, seed=0).to(device)
    states = {n: sample_states(model, noise, n, timestep) for n in (50, 25)}
    labels = {n: memorization_labels(s.samples.cpu(), data).copied for n, s in states.items()}
    reference, seconds = measure(model, states[50].x_t, timestep, REFERENCE)
    log(f"{name}: reference {reference.products.get('spectrum')} products, converged "
        f"{reference.converged.float().mean():.2f}, {seconds:.0f} s; copies {int(labels[50].sum())}/{probes}")
    return ModelRun(name, model, previous, timestep, noise, states, labels, reference)


def evaluate(run: ModelRun, s: Setting, power_probes: int) -> tuple[SharpnessStats, float, torch.Tensor, int]:
    """The setting's statistics on ``run``'s probes, its wall seconds, its copy labels and the probes it ran on."""
    x_t, labels = run.states[s.sampling_steps].x_t, run.labels[s.sampling_steps]
    n = power_probes if s.config.solver == "power" and s.config.krylov_steps is None else len(x_t)
    v0 = None
    if s.warm:  # the previous check's Ritz vectors depend on the spectrum's settings only
        spectrum = replace(s.config, trace_probes=2, trace_estimator="hutchinson", asymmetry_probes=0,
                           jvp="double_backward")
        key = (spectrum, s.sampling_steps)
        if key not in run.previous_vectors:
            if s.sampling_steps not in run.previous_states:
                run.previous_states[s.sampling_steps] = sample_states(run.previous, run.noise, s.sampling_steps,
                                                                      run.timestep).x_t
            prev_x = run.previous_states[s.sampling_steps]
            run.previous_vectors[key] = measure(run.previous, prev_x, run.timestep, spectrum)[0].eigenvectors
        v0 = run.previous_vectors[key][:n]
    stats, seconds = measure(run.model, x_t[:n], run.timestep, s.config, v0=v0)
    return stats, seconds, labels[:n], n


def fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def print_units(models: dict, args, device: torch.device, log) -> dict[str, UnitCosts]:
    print("\n### Unit costs (seconds at the check's batch; ratios in forward passes of the same batch)\n")
    print("| model | params | rows timed | forward ms | S v / fwd | J v double-bwd / fwd | J v forward-mode / fwd "
          "| J^T v / fwd | forward-mode max rel. diff | train step b128 (s) | train step / fwd |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    units = {}
    for name, (model, _) in models.items():
        model.to(device)
        cifar = name.startswith("ddpm")
        reduced = cifar and device.type == "cpu"
        rows = min(args.cifar_probes, args.check_probes) if reduced else args.check_probes
        network = model.unet if cifar else model.network
        t = model.schedule.timestep_for_sigma(SIGMA)
        u = unit_costs(model, network, t, rows, args.repeats, train_batch=8 if reduced else 128)
        if rows != args.check_probes:  # linear in the batch: scaled to the check's probe count
            scale = args.check_probes / rows
            u = replace(u, batch=args.check_probes, forward=u.forward * scale, symmetric=u.symmetric * scale,
                        jvp_double_backward=u.jvp_double_backward * scale, vjp=u.vjp * scale,
                        jvp_forward_mode=None if u.jvp_forward_mode is None else u.jvp_forward_mode * scale)
        units[name] = u
        params = sum(p.numel() for p in network.parameters())
        timed = f"{rows}" + (f" (x{args.check_probes // rows}, linear)" if rows != args.check_probes else "")
        step = f"{u.train_step:.3f}" + (f" (b{u.train_batch} x{128 // u.train_batch})" if u.train_batch < 128 else "")
        print(f"| {name} | {params / 1e6:.2f}M | {timed} | {1e3 * u.forward:.1f} | {u.ratio(u.symmetric):.2f} | "
              f"{u.ratio(u.jvp_double_backward):.2f} | {fmt(u.ratio(u.jvp_forward_mode), '.2f')} | "
              f"{u.ratio(u.vjp):.2f} | {fmt(u.jvp_mismatch, '.1e')} | {step} | {u.train_step / u.forward:.1f} |",
              flush=True)
        log(f"unit costs of {name} done")
    return units


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--probes", type=int, default=16, help="probes per trained model for the accuracy study")
    parser.add_argument("--check-probes", type=int, default=64, help="probes of one check (cost conversion)")
    parser.add_argument("--cifar-probes", type=int, default=2, help="rows the 35.7M UNet is timed at on CPU")
    parser.add_argument("--before-probes", type=int, default=8,
                        help="probes the untrained SmallUNet's 'before' solves are counted on")
    parser.add_argument("--cifar-before-probes", type=int, default=0,
                        help="probes the 35.7M UNet's 'before' solves are counted on (0: skip, slow on CPU)")
    parser.add_argument("--power-probes", type=int, default=4, help="probes power iteration to tol runs on")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sweep-only", action="store_true",
                        help="only the score error by Krylov budget (for the library's default score)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:5.0f} s] {message}", file=sys.stderr, flush=True)

    print(f"{platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, torch "
          f"{torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    print(f"library defaults now: {DEFAULT}")
    if args.sweep_only:
        print_budget_sweep([prepare(name, args.probes, device, log) for name in ("unet32-patches", "unet32-memorize")])
        return

    # model -> probes the 'before' solves are counted on (the trained SmallUNet: from table 2; 0: skip)
    models = {
        "mlp-digits (trained)": (cost_models.trained("mlp-digits", log, device=device)[0], 0),
        "mlp-digits (untrained)": (cost_models.mlp_digits(), 0),
        "unet32 (untrained)": (cost_models.unet32(), args.before_probes),
        "unet32-patches (trained)": (cost_models.trained("unet32-patches", log, device=device)[0], 0),
        "ddpm-cifar10 35.7M (random)": (cost_models.ddpm_cifar10(), args.cifar_before_probes),
    }
    units = print_units(models, args, device, log)

    # ---- 2. settings on the trained SmallUNets ------------------------------------------------------
    runs = [prepare(name, args.probes, device, log) for name in ("unet32-patches", "unet32-memorize")]
    u = units["unet32-patches (trained)"]
    ref_scores = torch.cat([r.reference.memorization_score.cpu() for r in runs])
    ref_auroc = auroc(ref_scores, torch.cat([r.labels[50] for r in runs]))
    print(f"\n### Settings on the trained SmallUNet 3x32x32 ({args.probes} probes per model, seed 0; power to tol on "
          f"the first {args.power_probes})\n")
    print("reference: " + "; ".join(f"{r.name} {r.reference.products.get('spectrum')} products, converged "
                                    f"{r.reference.converged.float().mean():.2f}, copies (DDIM-50) "
                                    f"{int(r.labels[50].sum())}/{args.probes}" for r in runs)
          + f"; reference AUROC (pooled): {fmt(ref_auroc)}\n")
    print("| setting | products by part (hs, spectrum, min, trace, asym) | products / sample / level | fwd-equiv "
          f"| check = train steps ({args.check_probes} probes): modelled, wall | max abs score err (patches, memorize) "
          "| AUROC - ref | max abs d_eff/d err | meets |")
    print("|---|---|---|---|---|---|---|---|---|")
    results = []
    for s in SETTINGS:
        errors, scores, labels, deff, walls = [], [], [], [], []
        for r in runs:
            stats, seconds, label, n = evaluate(r, s, args.power_probes)
            keep = max(2, int(n * s.probe_fraction))
            score, ref = stats.memorization_score.cpu()[:keep], r.reference.memorization_score.cpu()[:keep]
            errors.append((score - ref).abs().max().item())
            scores.append(score)
            labels.append(label[:keep])
            deff.append(((stats.effective_dim - r.reference.effective_dim[:n]).abs().max() / r.noise[0].numel()).item())
            walls.append(seconds * args.check_probes / n)
        diff = auroc(torch.cat(scores), torch.cat(labels)) - ref_auroc
        products = stats.products
        fe = forward_equivalents(products, s, u, sampling_calls(runs[0].model, s.sampling_steps, runs[0].timestep))
        modelled = train_steps(fe, u, args.check_probes)
        sampling_s = fe["sampling"] * u.forward
        wall = (min(walls) + sampling_s) / u.train_step
        apps = applications(products, s)
        # an AUROC without positives (NaN) cannot fail the criterion; the table shows "-" for it
        ok = (max(errors) <= MAX_SCORE_ERROR and not abs(diff) > MAX_AUROC_ERROR and apps <= MAX_PRODUCTS
              and modelled <= MAX_TRAIN_STEPS)
        results.append((s, ok, modelled))
        parts = ", ".join(f"{products.get(p, 0)}" for p in ("hs_norm", "spectrum", "min_eigenvalue", "trace",
                                                               "asymmetry"))
        print(f"| {s.name} | {parts} | {apps:.0f} | {sum(fe.values()):.0f} | {modelled:.1f}, {wall:.1f} | "
              f"{errors[0]:.4f}, {errors[1]:.4f} | {fmt(diff, '+.3f')} | {max(deff):.3f} | {'yes' if ok else 'no'} |",
              flush=True)
        log(f"setting {s.name} done")

    print_budget_sweep(runs)
    passing = [(steps, s) for s, ok, steps in results if ok]
    after = min(passing, key=lambda p: p[0])[1] if passing else None
    print(f"\nrecommended (cheapest setting that meets every criterion): {after.name if after else 'none'}\n")
    print_before_after(models, units, runs, after, args, device)
    log("done")


def print_budget_sweep(runs: list[ModelRun], budgets: tuple[int, ...] = (18, 26, 36, 46, 60, 80, 100, 120)) -> None:
    """Max per-sample score error of a cold Lanczos budget against the reference, budget by budget."""
    print("\n### Score error against the reference by Krylov budget (cold Lanczos on S, DDIM-50 states)\n")
    print("| budget (steps) | products / sample (spectrum) | " + " | ".join(f"max abs score err {r.name}" for r in runs)
          + " |")
    print("|---|---|" + "---|" * len(runs))
    sweeps = [budget_sweep(r.model, r.states[50].x_t, r.timestep, DEFAULT.k, list(budgets)) for r in runs]
    for n in budgets:
        errors = []
        for r, sweep in zip(runs, sweeps, strict=True):
            dim, nan = r.noise[0].numel(), torch.full((len(r.noise),), float("nan"))
            score = memorization_score(1.0 + r.sigma**2 * sweep[n].cpu(), nan, nan, dim, DEFAULT.score_statistic)
            errors.append((score - r.reference.memorization_score.cpu()).abs().max().item())
        print(f"| {n} | {2 * n} | " + " | ".join(f"{e:.4f}" for e in errors) + " |", flush=True)


def print_before_after(models: dict, units: dict, runs: list[ModelRun], after: Setting | None, args,
                       device: torch.device) -> None:
    print(f"### One check, before and after ({args.check_probes} probes, one noise level; forward-pass equivalents "
          "per probe)\n")
    print("| model | setting | products / sample / level | sampling | graph | spectrum (or dense J) | trace | hs "
          "| asym | fwd-equiv | check seconds | check = train steps (b128) | overhead every 250 steps |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, (model, before_probes) in models.items():
        u, t = units[name], model.schedule.timestep_for_sigma(SIGMA)
        for label, s in (("before", BEFORE), ("after", after)):
            if s is not None and name.startswith("mlp"):  # d = 64: the dense path, before and after
                s = replace(s, config=replace(s.config, solver="auto"))
            if s is None:
                print(f"| {name} | {label} | no setting met every criterion |" + " |" * 10)
                continue
            if name.startswith("unet32-patches"):
                products = evaluate(runs[0], s, args.power_probes)[0].products
            elif name.startswith("mlp") or before_probes:
                noise = probe_noise(before_probes or 2, model.data_shape, seed=0).to(device)
                products = measure(model, sample_states(model, noise, s.sampling_steps, t).x_t, t, s.config)[0].products
            else:
                print(f"| {name} | {label} | not measured (--cifar-before-probes 0) |" + " |" * 10)
                continue
            fe = forward_equivalents(products, s, u, sampling_calls(model, s.sampling_steps, t))
            steps = train_steps(fe, u, args.check_probes)
            spectrum = fe.get("dense", fe.get("spectrum", 0) + fe.get("min_eigenvalue", 0))
            print(f"| {name} | {label} | {applications(products, s):.0f} | {fe['sampling']:.0f} | "
                  f"{fe['score+graph']:.0f} | {spectrum:.0f} | {fe.get('trace', 0):.0f} | {fe.get('hs_norm', 0):.1f} | "
                  f"{fe.get('asymmetry', 0):.0f} | {sum(fe.values()):.0f} | "
                  f"{sum(fe.values()) * u.forward * args.check_probes / u.batch:.1f} | {steps:.1f} | "
                  f"{100 * steps / 250:.1f}% |", flush=True)


if __name__ == "__main__":
    main()
