"""Benchmark of the spectral solvers: products and wall time to 1e-3 accuracy on the top-5 eigenvalues.

Usage::

    python -m benchmarks.spectral.solvers            # full run, about 2-3 minutes on 2 CPU cores
    python -m benchmarks.spectral.solvers --quick    # smaller batches and fewer points

Operators (all "sigma^2-normalized": fn = -sigma * eps_hat, so S = sigma^2 sym(d score / dx)):

* ``analytic``: a linear Gaussian-like score on d=64 with a realistic spectrum (5 tangent values,
  a tail, a normal cluster near -1) plus a 1 % antisymmetric part.
* ``digits-mlp``: a residual MLP eps-net (h=256 x 3, sinusoidal time embedding) fitted for 300
  steps with the DDPM loss to sklearn digits (8x8, scaled to [-1, 1]), evaluated at t=27
  (sigma ~ 0.1) on alpha_t * x0 for real digits.
* ``conv-28``: a small random-init residual conv net on 28x28 (1 channel, 32 features).

Target: top-5 largest-algebraic eigenvalues ("LA", what the product uses) within 1e-3 of the exact
ones, relative to the spectral norm of S. "Practical" runs stop on their own residual test
(tol=1e-4); "oracle" counts are the fewest products after which the error is below 1e-3 (Lanczos:
from the leading blocks of one long tridiagonal; power iteration: bisection over max_iters with the
same seed). Timings are wall-clock on a shared machine and noisy. Writes the tables into
docs/benchmarks.md under ``## Spectral solvers``.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh
from torch import nn

from memcallback.spectral import dense_spectrum, jacobian_operator, lanczos, power_iteration
from memcallback.spectral.lanczos import lanczos_tridiagonal, tridiagonal

K = 5
TARGET = 1e-3
ROOT = Path(__file__).resolve().parents[2]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class TimeEmbedding(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freqs = torch.exp(-math.log(10000.0) * torch.arange(self.dim // 2) / (self.dim // 2))
        angles = t.float()[:, None] * freqs[None]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


class ResidualMLP(nn.Module):
    """eps-net for flat 64-d digits: x, t -> eps_hat."""

    def __init__(self, d: int = 64, h: int = 256, blocks: int = 3):
        super().__init__()
        self.embed = nn.Sequential(TimeEmbedding(64), nn.Linear(64, h), nn.SiLU())
        self.inp = nn.Linear(d, h)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(h), nn.Linear(h, h), nn.SiLU()) for _ in range(blocks))
        self.out = nn.Linear(h, d)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.inp(x) + self.embed(t)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


class ConvNet(nn.Module):
    """A small residual conv net on [1, n, n] images (random init)."""

    def __init__(self, ch: int = 32):
        super().__init__()
        self.inp = nn.Conv2d(1, ch, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1)) for _ in range(2)
        )
        self.out = nn.Conv2d(ch, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


def ddpm_schedule(T: int = 1000) -> torch.Tensor:
    return torch.cumprod(1 - torch.linspace(1e-4, 0.02, T), 0)


def fit_digits_mlp(steps: int) -> tuple[nn.Module, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = torch.tensor(load_digits().data, dtype=torch.float32) / 8.0 - 1.0
    alphabar = ddpm_schedule()
    torch.manual_seed(0)
    net = ResidualMLP()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    g = gen(1)
    for _ in range(steps):
        x0 = data[torch.randint(0, len(data), (128,), generator=g)]
        t = torch.randint(0, 1000, (128,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        a = alphabar[t].sqrt()[:, None]
        loss = (net(a * x0 + (1 - a**2).sqrt() * eps, t) - eps).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval().requires_grad_(False)
    return net, data


def operators(batch: int, quick: bool) -> dict[str, tuple]:
    """name -> (fn, x, description)."""
    d = 64
    Q = torch.linalg.qr(torch.randn(d, d, generator=gen(0))).Q
    tangent = torch.tensor([0.02, 0.0, -0.03, -0.08, -0.15])
    lam = torch.cat([tangent, -torch.logspace(-0.7, -0.1, 8), -1.0 - 0.1 * torch.rand(d - 13, generator=gen(1))])
    G = torch.randn(d, d, generator=gen(2))
    A = Q @ torch.diag(lam) @ Q.T + 0.01 * (G - G.T) / math.sqrt(2 * d)
    x_an = torch.randn(batch, d, generator=gen(3))

    net, data = fit_digits_mlp(300)
    t = 27
    alpha = ddpm_schedule()[t].sqrt()
    sigma = (1 - alpha**2).sqrt()
    tt = torch.tensor([t])

    def mlp_fn(z: torch.Tensor) -> torch.Tensor:
        return -sigma * net(z, tt.expand(z.shape[0]))

    x_mlp = alpha * data[torch.randperm(len(data), generator=gen(4))[:batch]]

    torch.manual_seed(5)
    conv = ConvNet().eval().requires_grad_(False)
    x_conv = torch.randn(max(2, batch // 4) if quick else max(2, batch // 2), 1, 28, 28, generator=gen(6))

    def conv_fn(z: torch.Tensor) -> torch.Tensor:
        return -0.1 * conv(z)

    return {
        "analytic": (lambda z: z @ A.T, x_an, f"linear, d=64, B={batch}"),
        "digits-mlp": (mlp_fn, x_mlp, f"MLP 0.5M params fitted 300 steps, d=64, B={batch}, sigma={sigma:.3f}"),
        "conv-28": (conv_fn, x_conv, f"conv net random init, d=784, B={x_conv.shape[0]}"),
    }


def exact_spectrum(fn, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """All eigenvalues (descending, float64) per sample from the dense path, and its wall time."""
    start = time.perf_counter()
    rows = [dense_spectrum(fn, x[b : b + 1]).eigenvalues for b in range(x.shape[0])]
    return torch.cat(rows).double(), time.perf_counter() - start


def rel_error(values: torch.Tensor, exact: torch.Tensor) -> float:
    scale = exact.abs().amax(-1, keepdim=True)
    return float(((values.double() - exact[:, :K]).abs() / scale).max())


def lanczos_oracle(fn, x, exact, max_steps: int) -> int | None:
    op = jacobian_operator(fn, x)
    start = torch.randn(x.shape[0], 1, op.dim, generator=gen(11)).to(op.dtype)
    start = start / start.norm(dim=-1, keepdim=True)
    alpha, beta, _, _ = lanczos_tridiagonal(op, start, min(max_steps, op.dim), gen(12))
    for m in range(K, alpha.shape[-1] + 1):
        theta = torch.linalg.eigvalsh(tridiagonal(alpha[:, 0, :m], beta[:, 0, : m - 1])).flip(-1)
        if rel_error(theta[:, :K], exact) <= TARGET:
            return m
    return None


def power_oracle(fn, x, exact, max_iters: int) -> int | None:
    def ok(iters: int) -> tuple[bool, int]:
        res = power_iteration(jacobian_operator(fn, x), K, "LA", max_iters=iters, tol=0.0, generator=gen(13))
        return rel_error(res.eigenvalues, exact) <= TARGET, res.num_matvecs

    good, matvecs = ok(max_iters)
    if not good:
        return None
    lo, hi = 0, max_iters
    while hi - lo > 1:
        mid = (lo + hi) // 2
        mid_ok, mid_matvecs = ok(mid)
        if mid_ok:
            hi, matvecs = mid, mid_matvecs
        else:
            lo = mid
    return matvecs


def run_eigsh(fn, x) -> tuple[torch.Tensor, float, float]:
    """scipy ARPACK per sample on a B=1 operator; returns (values, matvecs per sample, seconds)."""
    values, counts = [], []
    start = time.perf_counter()
    for b in range(x.shape[0]):
        op = jacobian_operator(fn, x[b : b + 1])

        def mv(v: np.ndarray, op=op) -> np.ndarray:
            w = torch.as_tensor(np.asarray(v).reshape(1, 1, *op.shape), dtype=op.dtype)
            return op(w).double().numpy().reshape(-1)

        v0 = np.random.default_rng(b).standard_normal(op.dim)
        ev = eigsh(LinearOperator((op.dim, op.dim), matvec=mv, dtype=np.float64), k=K, which="LA", tol=1e-4, v0=v0)[0]
        values.append(torch.from_numpy(np.sort(ev)[::-1].copy()))
        counts.append(op.num_matvecs)
    return torch.stack(values), float(np.mean(counts)), time.perf_counter() - start


def timed(fn, repeats: int = 5) -> float:
    """Median wall time of ``fn()`` in seconds (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def solver_table(ops: dict, quick: bool) -> tuple[list[str], dict]:
    lines = [
        "| operator | method | products / sample (practical stop) | max error / norm | all converged | wall s | "
        "oracle products to 1e-3 |",
        "|---|---|---|---|---|---|---|",
    ]
    ratios = {}
    for name, (fn, x, _) in ops.items():
        exact, t_dense = exact_spectrum(fn, x)
        d = x[0].numel()
        rows = {}
        start = time.perf_counter()
        lz = lanczos(jacobian_operator(fn, x), K, "LA", generator=gen(7))
        rows["lanczos"] = (lz.num_matvecs, rel_error(lz.eigenvalues, exact), bool(lz.converged.all()))
        t_lz = time.perf_counter() - start
        start = time.perf_counter()
        pw_iters = 1000 if d <= 64 else (100 if quick else 300)
        pw = power_iteration(jacobian_operator(fn, x), K, "LA", max_iters=pw_iters, generator=gen(8))
        rows["power (shifted, block 10)"] = (pw.num_matvecs, rel_error(pw.eigenvalues, exact), bool(pw.converged.all()))
        t_pw = time.perf_counter() - start
        ev, n_eigsh, t_eigsh = run_eigsh(fn, x)
        oracle_lz = lanczos_oracle(fn, x, exact, 150)
        oracle_pw = power_oracle(fn, x, exact, pw_iters) if d <= 64 and not quick else None
        table = [
            ("lanczos", rows["lanczos"], t_lz, oracle_lz),
            ("power (shifted, block 10)", rows["power (shifted, block 10)"], t_pw, oracle_pw),
            ("scipy eigsh (per sample)", (n_eigsh, rel_error(ev, exact), True), t_eigsh, None),
            ("dense (jacrev + eigh)", (d, 0.0, True), t_dense, d),
        ]
        for method, (n, err, conv), secs, oracle in table:
            oracle_text = "-" if oracle is None else str(oracle)
            if method.startswith("power") and oracle is None and d <= 64 and not quick:
                oracle_text = f"> {pw_iters * 2 * K} (not reached)"
            lines.append(f"| {name} | {method} | {n:.0f} | {err:.1e} | {conv} | {secs:.3f} | {oracle_text} |")
        ratios[name] = (pw.num_matvecs / lz.num_matvecs, None if oracle_pw is None else oracle_pw / oracle_lz)
        print("\n".join(lines[-4:]), flush=True)
    return lines, ratios


def product_cost_table(ops: dict) -> list[str]:
    lines = [
        "| operator | B | forward of B | sym product, m=1 | ratio | J v only | J^T v only | sym, m=8 (8B rows) | "
        "ratio (m=8) | first call (builds graph) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, (fn, x, _) in ops.items():
        B = x.shape[0]
        with torch.no_grad():
            t_fwd = timed(lambda fn=fn, x=x: fn(x), 9)
        start = time.perf_counter()
        op = jacobian_operator(fn, x)
        V1 = torch.randn(B, 1, *x.shape[1:], generator=gen(9))
        op(V1)
        t_first = time.perf_counter() - start
        t_sym = timed(lambda op=op, V1=V1: op(V1), 9)
        t_jv = timed(lambda op=op, V1=V1: op.matvec(V1), 9)
        t_jtv = timed(lambda op=op, V1=V1: op.rmatvec(V1), 9)
        V8 = torch.randn(B, 8, *x.shape[1:], generator=gen(10))
        t_sym8 = timed(lambda op=op, V8=V8: op(V8), 5)
        lines.append(
            f"| {name} | {B} | {t_fwd * 1e3:.2f} ms | {t_sym * 1e3:.2f} ms | {t_sym / t_fwd:.1f}x | "
            f"{t_jv * 1e3:.2f} ms | {t_jtv * 1e3:.2f} ms | {t_sym8 * 1e3:.2f} ms | {t_sym8 / t_fwd:.1f}x | "
            f"{t_first * 1e3:.1f} ms |"
        )
        print(lines[-1], flush=True)
    return lines


def scaling_tables(ops: dict, quick: bool) -> list[str]:
    fn, x, _ = ops["digits-mlp"]
    lines = [
        "Growth with B (digits-mlp, Lanczos top-5 LA, tol 1e-4):",
        "",
        "| B | products / sample | all converged | wall s | ms per sample |",
        "|---|---|---|---|---|",
    ]
    pool = x if x.shape[0] >= 64 else x.repeat(math.ceil(64 / x.shape[0]), 1)
    for B in (1, 4, 16) if quick else (1, 4, 16, 64):
        xb = pool[:B]
        start = time.perf_counter()
        res = lanczos(jacobian_operator(fn, xb), K, "LA", generator=gen(14))
        secs = time.perf_counter() - start
        lines.append(f"| {B} | {res.num_matvecs} | {bool(res.converged.all())} | {secs:.3f} | {secs / B * 1e3:.1f} |")
    torch.manual_seed(5)
    conv = ConvNet().eval().requires_grad_(False)
    lines += [
        "",
        "Growth with d (random-init conv net, B=4, Lanczos top-5 LA, tol 1e-4):",
        "",
        "| image | d | products / sample | all converged | wall s | sym product ms |",
        "|---|---|---|---|---|---|",
    ]
    for n in (16, 28) if quick else (16, 28, 32, 48):
        xc = torch.randn(4, 1, n, n, generator=gen(15))
        op = jacobian_operator(lambda z: -0.1 * conv(z), xc)
        t_mv = timed(lambda op=op, xc=xc: op(xc[:, None]), 5)
        start = time.perf_counter()
        res = lanczos(jacobian_operator(lambda z: -0.1 * conv(z), xc), K, "LA", generator=gen(16))
        secs = time.perf_counter() - start
        conv_ok = bool(res.converged.all())
        lines.append(f"| {n}x{n} | {n * n} | {res.num_matvecs} | {conv_ok} | {secs:.3f} | {t_mv * 1e3:.2f} |")
    print("\n".join(lines), flush=True)
    return lines


def write_section(text: str, path: Path) -> None:
    """Replaces (or appends) the ``## Spectral solvers`` section of ``path``."""
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(r"^## Spectral solvers\n.*?(?=^## |\Z)", re.S | re.M)
    new = pattern.sub(lambda _: text, old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + text
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller batches, fewer points (~1 min)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md", help="markdown file to update")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: stable timings on a shared CPU; 2 threads thrash)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    start = time.perf_counter()
    batch = 8 if args.quick else 16
    ops = operators(batch, args.quick)
    solver_lines, ratios = solver_table(ops, args.quick)
    cost_lines = product_cost_table(ops)
    scaling_lines = scaling_tables(ops, args.quick)
    total = time.perf_counter() - start
    command = "python -m benchmarks.spectral.solvers" + (" --quick" if args.quick else "")
    command += "" if args.threads == 1 else f" --threads {args.threads}"
    ratio_lines = [
        f"- {name}: power iteration used {practical:.1f}x the products of Lanczos with the practical stop"
        + ("" if oracle is None else f", {oracle:.1f}x at the oracle stop")
        + "."
        for name, (practical, oracle) in ratios.items()
    ]
    text = "\n".join(
        [
            "## Spectral solvers",
            "",
            f"Made by `{command}` (total {total:.0f} s) on {platform.machine()} with {os.cpu_count()} CPU cores, "
            f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, Python {sys.version.split()[0]}; "
            "no GPU. Timings are wall-clock medians on a shared machine: compare within a table, not across runs.",
            "",
            "Operators: " + "; ".join(f"**{name}** ({desc})" for name, (_, _, desc) in ops.items()) + ".",
            "Target: the 5 largest-algebraic eigenvalues of S = (J + J^T)/2 within 1e-3 of the dense reference, "
            "relative to ||S||_2. One product = one symmetric product (one J v and one J^T v) for one sample; "
            "each Lanczos step is one batched call for all B samples, power iteration calls with m = 10 vectors "
            "per sample, eigsh runs sample by sample, the dense path does d reverse passes per sample. "
            "Practical stops use tol=1e-4 on the residual (so their errors are far below 1e-3); an oracle of "
            "'-' was not measured (power iteration on conv-28 is too slow to bisect; eigsh exposes no iterates).",
            "",
            *solver_lines,
            "",
            "Lanczos against power iteration (the goal was at least 10x fewer products):",
            "",
            *ratio_lines,
            "",
            "Cost of one product relative to a forward call (`ratio` = time of one symmetric product for all B "
            "samples / one forward of the B samples, on the cached graph):",
            "",
            *cost_lines,
            "",
            *scaling_lines,
            "",
        ]
    )
    write_section(text, args.out)
    print(f"\nwrote {args.out} in {total:.0f} s")


if __name__ == "__main__":
    main()
