"""Training runs of the realistic-scale study: SmallUNet on p x p RGB photo patches (p = 16; 8 for the
threshold-transfer test), cached and resumable.

A run trains ``SmallUNet((3, p, p), base_channels=16, channel_mults=(1, 2))`` (DDPM, v-prediction, linear
schedule, AdamW lr 2e-3, batch 64, one torch thread) on ``N`` distinct patches of ``PatchesDataModule``
(``N=None``: every non-held-out patch). The plain loop below does what ``DiffusionModule.training_step``
does, with every random draw (batch indices, timesteps, noise) from one ``torch.Generator`` seeded by the
run seed, so a run resumed from ``resume.pt`` continues bit for bit. Every ``every`` steps (and at step 0)
it keeps the weights (``step{step:06d}.pt``) and records the held-out and training denoising losses on fixed
noise and timesteps (what ``DiffusionModule.validation_step`` computes) plus a quick nearest-neighbour rate
on 64 DDIM samples (progress only; the study's ground truth is measured later on 256 samples).
The run seed also fixes the held-out split and the training subset.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from memcallback.app.data import PatchesDataModule
from memcallback.app.models import DiffusionModule, SmallUNet
from memcallback.diffusion import ddim_sample
from memcallback.measure.analysis import probe_noise
from memcallback.measure.ground_truth import memorization_labels

BATCH = 64
# v-prediction: DDIM's first steps read x0_hat = alpha_t x_t - sigma_t v_hat; with eps-prediction
# (x_t - sigma_t eps_hat) / alpha_t multiplies the network's error by 1 / alpha_T ~ 160 on the linear schedule,
# and the samples of these short CPU runs left the data range (91% of pixels outside [-1, 1] at step 1250).
PREDICTION = "v_prediction"
LR = 2e-3
BASE_CHANNELS = 16
CHANNEL_MULTS = (1, 2)
LOSS_TIMESTEPS = 10  # fixed, evenly spaced timesteps of the denoising losses (as DiffusionModule's val/loss)
LOSS_TRAIN_ITEMS = 512  # the training loss uses at most this many training patches (the first ones)


@dataclass(frozen=True)
class RunSpec:
    """One run: ``num_train`` distinct patches (``None``: all), ``seed``, ``steps``, a checkpoint every ``every``."""

    num_train: int | None
    seed: int
    steps: int
    every: int
    patch_size: int = 16

    @property
    def label(self) -> str:
        """Folder and table name, e.g. ``n32_s0`` or ``nall_s1``."""
        n = "all" if self.num_train is None else str(self.num_train)
        return f"n{n}_s{self.seed}_p{self.patch_size}"

    @property
    def grid(self) -> list[int]:
        """The checkpoint steps ``0, every, 2 every, ..., steps``."""
        return list(range(0, self.steps + 1, self.every))


def parse_spec(text: str, steps: int, every: int, patch_size: int) -> RunSpec:
    """``"32:0"`` -> N=32 seed 0; ``"all:1"`` -> every patch, seed 1."""
    n, seed = text.split(":")
    return RunSpec(None if n == "all" else int(n), int(seed), steps, every, patch_size)


def datamodule(spec: RunSpec) -> PatchesDataModule:
    """The run's patches (split and subset fixed by the run seed), set up."""
    dm = PatchesDataModule(patch_size=spec.patch_size, num_train=spec.num_train, batch_size=BATCH, seed=spec.seed)
    dm.setup("fit")
    return dm


def build(spec: RunSpec) -> DiffusionModule:
    """A fresh module with the run's initial weights."""
    torch.manual_seed(spec.seed)
    return DiffusionModule(SmallUNet((3, spec.patch_size, spec.patch_size), base_channels=BASE_CHANNELS,
                                     channel_mults=CHANNEL_MULTS), prediction_type=PREDICTION, lr=LR)


def run_dir(cache: Path, spec: RunSpec) -> Path:
    """Folder of one run."""
    return cache / spec.label


def checkpoint(cache: Path, spec: RunSpec, step: int) -> DiffusionModule:
    """The module at a grid ``step``, in eval mode."""
    module = build(spec)
    module.network.load_state_dict(torch.load(run_dir(cache, spec) / f"step{step:06d}.pt", weights_only=True))
    return module.eval()


@torch.no_grad()
def denoising_loss(module: DiffusionModule, data: Tensor, seed: int = 0) -> float:
    """``val/loss`` of ``DiffusionModule`` (MSE of ``model_output``, the EMA weights where the module has them, to the
    network's target) over ``data`` on fixed noise and timesteps.

    ``LOSS_TIMESTEPS`` timesteps ``t_i = int((i + 1/2) T / LOSS_TIMESTEPS)``; the noise of timestep ``i``
    is drawn from a generator seeded ``seed + i``, so every checkpoint is scored on the same noisy inputs.
    """
    num_t = module.schedule.num_timesteps
    losses = []
    for i in range(LOSS_TIMESTEPS):
        t = torch.full((len(data),), int((i + 0.5) * num_t / LOSS_TIMESTEPS), dtype=torch.long)
        noise = torch.randn(data.shape, generator=torch.Generator().manual_seed(seed + i))
        x_t = module.schedule.add_noise(data, noise, t)
        losses.append(F.mse_loss(module.model_output(x_t, t), module.target(data, noise, t)))
    return torch.stack(losses).mean().item()


def train_step(module: DiffusionModule, optimizer: torch.optim.Optimizer, train_x: Tensor,
               generator: torch.Generator, batch: int) -> None:
    """One optimizer step of ``DiffusionModule``'s loss on ``batch`` rows of ``train_x``, every random draw (rows,
    timesteps, noise) from ``generator`` (so a run resumed with the generator's state continues bit for bit)."""
    idx = torch.randint(len(train_x), (batch,), generator=generator)
    t = torch.randint(0, module.schedule.num_timesteps, (batch,), generator=generator)
    x0 = train_x[idx]
    noise = torch.randn(x0.shape, generator=generator)
    loss = F.mse_loss(module.network(module.schedule.add_noise(x0, noise, t), t), module.target(x0, noise, t))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _evaluate(module: DiffusionModule, train: Tensor, val: Tensor, step: int) -> dict[str, float]:
    start = time.perf_counter()
    module.eval()
    with torch.no_grad():
        samples = ddim_sample(module, probe_noise(64, module.data_shape, 3), 50).sample
    out = {"step": step, "val_loss": denoising_loss(module, val), "train_loss": denoising_loss(module, train[
        :LOSS_TRAIN_ITEMS]), "quick_nn_rate": memorization_labels(samples, train).rate}
    out["eval_s"] = time.perf_counter() - start
    module.train()
    return out


def train(cache: Path, spec: RunSpec) -> dict[str, Any]:
    """Train one run to ``spec.steps`` (resuming from its last grid step) and return its record."""
    torch.set_num_threads(1)
    folder = run_dir(cache, spec)
    folder.mkdir(parents=True, exist_ok=True)
    record_path, resume_path = folder / "run.json", folder / "resume.pt"
    dm = datamodule(spec)
    train_x, val_x = dm.unique_train_data(), dm.val_data
    module = build(spec)
    optimizer = torch.optim.AdamW(module.network.parameters(), lr=LR)
    generator = torch.Generator().manual_seed(spec.seed)
    record: dict[str, Any] = {"label": spec.label, "n": len(train_x), "seed": spec.seed, "evals": [], "wall_s": 0.0}
    # wall_s: wall time of the run including the evaluations (their own time is each eval's eval_s)
    step = 0
    if resume_path.exists():
        state = torch.load(resume_path, weights_only=False)
        module.network.load_state_dict(state["network"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        step, record = state["step"], json.loads(record_path.read_text())
    if step >= spec.steps:
        return record
    module.network.train()
    start = time.perf_counter()
    while True:
        if step % spec.every == 0 and (not record["evals"] or record["evals"][-1]["step"] < step):
            torch.save(module.network.state_dict(), folder / f"step{step:06d}.pt")
            record["evals"].append(_evaluate(module, train_x, val_x, step))
            record["wall_s"] += time.perf_counter() - start
            start = time.perf_counter()
            torch.save({"network": module.network.state_dict(), "optimizer": optimizer.state_dict(),
                        "generator": generator.get_state(), "step": step}, resume_path)
            record_path.write_text(json.dumps(record))
            e = record["evals"][-1]
            print(f"{spec.label} step {step}: val {e['val_loss']:.4f} train {e['train_loss']:.4f} "
                  f"quick nn rate {e['quick_nn_rate']:.2f} ({record['wall_s']:.0f} s)", flush=True)
        if step >= spec.steps:
            return record
        train_step(module, optimizer, train_x, generator, BATCH)
        step += 1
