"""Training runs of the transfer study, cached and resumable: the app's ``model=unet`` trained on one family.

A run trains ``DiffusionModule(SmallUNet(shape, base_channels=16, channel_mults=(1, 2)))`` (125k parameters, a
quarter of a step's time at 32 channels on these CPUs) with the app's ``model=unet`` defaults otherwise (epsilon
prediction, linear schedule, EMA 0.999) at lr 1e-3 and batch 32, for ``steps`` steps, one torch thread
(``benchmarks.scale.runs.train_step``, then the EMA update). It keeps the network and EMA weights
every ``every`` steps (``step{step:06d}.pt``, step 0 included) and resumes bit for bit from ``resume.pt``: every
random draw (batch indices, timesteps, noise) comes from one generator seeded by the run seed.

    python -m benchmarks.transfer.runs faces:mem faces:gen --steps 3000
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.scale.runs import train_step
from benchmarks.transfer.families import BATCH, FAMILIES, Family
from memcallback.app.data import ArrayDataModule
from memcallback.app.models import DiffusionModule, SmallUNet

LR = 1e-3
BASE_CHANNELS = 16
CACHE = Path("benchmarks/outputs/transfer")


@dataclass(frozen=True)
class RunSpec:
    """One run: a family, memorizing (``num_train = family.memorize_n``) or generalizing (all), a seed."""

    family: str
    memorize: bool
    seed: int = 0
    steps: int = 3000
    every: int = 250

    @property
    def label(self) -> str:
        """Folder and table name, e.g. ``faces_mem_s0``."""
        return f"{self.family}_{'mem' if self.memorize else 'gen'}_s{self.seed}"

    @property
    def spec_family(self) -> Family:
        return FAMILIES[self.family]

    @property
    def grid(self) -> list[int]:
        """The checkpoint steps ``0, every, ..., steps``."""
        return list(range(0, self.steps + 1, self.every))


def parse_spec(text: str, steps: int, every: int) -> RunSpec:
    """``"faces:mem"`` or ``"faces:gen:1"`` (seed 1)."""
    family, kind, *seed = text.split(":")
    if family not in FAMILIES or kind not in ("mem", "gen"):
        raise ValueError(f"run {text!r}: expected FAMILY:mem|gen[:SEED] with FAMILY in {sorted(FAMILIES)}")
    return RunSpec(family, kind == "mem", int(seed[0]) if seed else 0, steps, every)


def datamodule(spec: RunSpec) -> ArrayDataModule:
    """The run's data (split and subset fixed by the run seed), set up."""
    family = spec.spec_family
    dm = family.make(family.memorize_n if spec.memorize else None, spec.seed)
    dm.setup("fit")
    return dm


def build(spec: RunSpec, data_shape: tuple[int, ...]) -> DiffusionModule:
    """A fresh module with the run's initial weights."""
    torch.manual_seed(spec.seed)
    return DiffusionModule(SmallUNet(data_shape, base_channels=BASE_CHANNELS, channel_mults=(1, 2)), lr=LR,
                           ema_decay=0.999)


def run_dir(spec: RunSpec, cache: Path = CACHE) -> Path:
    """Folder of one run."""
    return cache / spec.label


def checkpoint(spec: RunSpec, step: int, data_shape: tuple[int, ...], cache: Path = CACHE) -> DiffusionModule:
    """The module at a grid ``step`` (network and EMA weights), in eval mode."""
    module = build(spec, data_shape)
    state = torch.load(run_dir(spec, cache) / f"step{step:06d}.pt", weights_only=True)
    module.network.load_state_dict(state["network"])
    module.ema.module.load_state_dict(state["ema"])
    return module.eval()


def train(spec: RunSpec, cache: Path = CACHE) -> dict[str, Any]:
    """Train one run to ``spec.steps`` (resuming from its last grid step) and return its record."""
    torch.set_num_threads(1)
    folder = run_dir(spec, cache)
    folder.mkdir(parents=True, exist_ok=True)
    record_path, resume_path = folder / "run.json", folder / "resume.pt"
    dm = datamodule(spec)
    train_x = dm.unique_train_data()
    module = build(spec, tuple(train_x.shape[1:]))
    optimizer = torch.optim.AdamW(module.network.parameters(), lr=LR)
    generator = torch.Generator().manual_seed(spec.seed)
    record: dict[str, Any] = {"label": spec.label, "n": len(train_x), "seed": spec.seed, "train_s": 0.0, "saved": []}
    step = 0
    if resume_path.exists():
        state = torch.load(resume_path, weights_only=False)
        module.network.load_state_dict(state["network"])
        module.ema.module.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        step, record = state["step"], json.loads(record_path.read_text())
    module.network.train()
    start = time.perf_counter()
    while True:
        if step % spec.every == 0 and step not in record["saved"]:
            record["train_s"] += time.perf_counter() - start
            weights = {"network": module.network.state_dict(), "ema": module.ema.module.state_dict()}
            torch.save(weights, folder / f"step{step:06d}.pt")
            record["saved"].append(step)
            torch.save({**weights, "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                        "step": step}, resume_path)
            record_path.write_text(json.dumps(record))
            print(f"{spec.label} step {step} ({record['train_s']:.0f} s)", flush=True)
            start = time.perf_counter()
        if step >= spec.steps:
            return record
        train_step(module, optimizer, train_x, generator, BATCH)
        module.ema.update(module.network)
        step += 1


def run_arguments(doc: str) -> argparse.ArgumentParser:
    """The command line of the study's scripts: runs as ``FAMILY:mem|gen[:SEED]``, their steps, grid and cache."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="FAMILY:mem|gen[:SEED]")
    parser.add_argument("--steps", type=int, default=RunSpec.steps)
    parser.add_argument("--every", type=int, default=RunSpec.every)
    parser.add_argument("--cache", type=Path, default=CACHE)
    return parser


def main() -> None:
    args = run_arguments(__doc__).parse_args()
    for text in args.runs:
        record = train(parse_spec(text, args.steps, args.every), args.cache)
        print(f"{record['label']}: {record['train_s']:.0f} s of training", flush=True)


if __name__ == "__main__":
    main()
