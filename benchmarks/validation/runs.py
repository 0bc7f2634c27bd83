"""Training runs of the validation study, cached on disk, and the measurements made on their checkpoints.

Each run trains the digits reference model (ResidualMLP 256x3, DDPM eps-prediction, batch 128, Adam 1e-3,
seed 0) on ``N`` distinct digits for up to 8000 steps with one torch thread. Training is never stopped: a
``MemorizationMonitor`` with ``stop_training=False`` records its curves (a check every 250 steps at the
noise levels of :data:`CURVE_SIGMAS`, the first one primary), a checkpoint is kept every 250 steps and the
held-out denoising loss ``val/loss`` is recorded at every validation (once per 500-step epoch). Because the
monitor never perturbs training, where the callback *would* have stopped is found by replaying its stop
rule on the recorded history. Results go to ``<cache>/n<N>/run.json`` next to the checkpoints.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import Tensor

from memcallback import MemorizationMonitor, ProbeConfig, StopConfig, analyze
from memcallback.app.data import DigitsDataModule, ToyMixtureDataModule
from memcallback.app.models import DiffusionModule, ResidualMLP
from memcallback.diffusion import ddim_sample
from memcallback.measure.analysis import probe_noise
from memcallback.measure.sharpness import SharpnessConfig

#: noise levels recorded over training; the first is the callback's default (primary) level.
CURVE_SIGMAS = (0.1, 0.05, 0.2)
CHECK_EVERY = 250
ALL_DIGITS = 1617  # non-held-out digits of DigitsDataModule(num_train=None)


@dataclass(frozen=True)
class RunSpec:
    """One training run: ``num_train`` distinct digits (``None``: all) for ``max_steps`` steps.

    With ``toy=True`` the run is the 2-D toy of ``experiment=toy_memorize`` instead (a ring plus 4 isolated
    points repeated 32 times, ResidualMLP with hidden 128, batch 256, ``k=1``); ``num_train`` is ignored.
    """

    num_train: int | None
    max_steps: int = 8000
    toy: bool = False

    @property
    def label(self) -> str:
        """Short name used in tables and folders: ``n16`` ... ``nall``, or ``toy``."""
        if self.toy:
            return "toy"
        return "nall" if self.num_train is None else f"n{self.num_train}"

    @property
    def n(self) -> int:
        """Number of distinct training digits."""
        return ALL_DIGITS if self.num_train is None else self.num_train


def parse_n(text: str) -> int | None:
    """``"all"`` -> ``None`` (every non-held-out digit), else the integer."""
    return None if text == "all" else int(text)


def datamodule(num_train: int | None) -> DigitsDataModule:
    """The digits data module of the study (held-out split fixed by seed 0), already set up."""
    dm = DigitsDataModule(num_train=num_train, samples_per_epoch=64000, batch_size=128, seed=0)
    dm.setup("fit")
    return dm


class _ValLossRecorder(Callback):
    """Records ``val/loss`` at every validation with its global step."""

    def __init__(self) -> None:
        self.values: list[tuple[int, float]] = []

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and "val/loss" in trainer.callback_metrics:
            self.values.append((trainer.global_step, float(trainer.callback_metrics["val/loss"])))


def run_dir(cache: Path, spec: RunSpec) -> Path:
    """Folder of one run inside the cache."""
    return cache / f"{spec.label}_steps{spec.max_steps}"


def train(cache: Path, spec: RunSpec) -> dict[str, Any]:
    """Train one run (or load it from the cache) and return its record (see the module docstring)."""
    folder = run_dir(cache, spec)
    record_path = folder / "run.json"
    if record_path.exists():
        return json.loads(record_path.read_text())
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    module = DiffusionModule(_network(spec))
    if spec.toy:
        dm = ToyMixtureDataModule(seed=0)
    else:
        dm = DigitsDataModule(num_train=spec.num_train, samples_per_epoch=64000, batch_size=128, seed=0)
    monitor = MemorizationMonitor(probes=ProbeConfig(sigmas=CURVE_SIGMAS), every_n_train_steps=CHECK_EVERY,
                                  stop=StopConfig(stop_training=False), save_plot=False, media="none",
                                  sharpness=SharpnessConfig(k=1 if spec.toy else 8))
    recorder = _ValLossRecorder()
    ckpt = ModelCheckpoint(dirpath=folder / "checkpoints", filename="step{step:06d}", auto_insert_metric_name=False,
                           every_n_train_steps=CHECK_EVERY, save_top_k=-1, monitor=None)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=spec.max_steps, max_epochs=-1, logger=False,
                         callbacks=[monitor, recorder, ckpt], enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, default_root_dir=folder)
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    wall = time.perf_counter() - start
    record = {"label": spec.label, "n": spec.n, "max_steps": spec.max_steps, "wall_s": wall,
              "history": monitor.history, "val_loss": recorder.values}
    folder.mkdir(parents=True, exist_ok=True)
    record_path.write_text(json.dumps(record))
    return record


def _network(spec: RunSpec) -> ResidualMLP:
    return ResidualMLP((2,), hidden=128, num_blocks=3) if spec.toy else ResidualMLP((1, 8, 8), hidden=256, num_blocks=3)


def checkpoint(cache: Path, spec: RunSpec, step: int) -> DiffusionModule:
    """The trained module at ``step`` (a multiple of 250; 0 rebuilds the seeded initial weights), in eval mode."""
    if step == 0:
        pl.seed_everything(0, verbose=False)
        return DiffusionModule(_network(spec)).eval()
    path = run_dir(cache, spec) / "checkpoints" / f"step{step:06d}.ckpt"
    module = DiffusionModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    return module.eval()


def history(cache: Path, spec: RunSpec, record: dict[str, Any], k: int) -> list[dict[str, float]]:
    """The callback's per-check summaries with ``k`` flattest directions.

    ``k=8`` (the callback default the runs were recorded with) returns the recorded history. Any other ``k``
    re-measures every checkpoint exactly as the callback would have (its 64 probes from seed 0, DDIM-50,
    the noise levels of :data:`CURVE_SIGMAS`, dense solver, ground truth), cached in the run folder.
    """
    if k == 8:
        return record["history"]
    path = run_dir(cache, spec) / f"history_k{k}.json"
    if path.exists():
        return json.loads(path.read_text())
    train_data = datamodule(spec.num_train).unique_train_data()
    out = []
    for step in range(0, spec.max_steps + 1, CHECK_EVERY):
        report = analyze(checkpoint(cache, spec, step), num_samples=64, sigmas=CURVE_SIGMAS,
                         config=SharpnessConfig(k=k), seed=0, train_data=train_data)
        out.append({"step": float(step), **report.summary()})
    path.write_text(json.dumps(out))
    return out


def heldout_loss(module: DiffusionModule, num_train: int | None) -> float:
    """The held-out denoising loss ``val/loss`` of ``module`` (the module's own fixed-noise validation)."""
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False)
    return float(trainer.validate(module, datamodule=datamodule(num_train), verbose=False)[0]["val/loss"])


class FrechetPCA:
    """A small FID-like distance for 8x8 digits, fully offline.

    Features are the top ``dim`` principal components (scikit-learn PCA, fitted once on all 1797 digits);
    the distance is the Frechet distance between Gaussians fitted to the features of two sets,
    ``||m1 - m2||^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2))``. The reference set is all 1797 digits.
    """

    def __init__(self, dim: int = 20) -> None:
        from sklearn.decomposition import PCA

        all_digits = DigitsDataModule().load()[0].flatten(1).numpy().astype(np.float64)
        self.pca = PCA(n_components=dim, random_state=0).fit(all_digits)
        self.reference = self._moments(all_digits)

    def _moments(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        f = self.pca.transform(x)
        return f.mean(axis=0), np.cov(f, rowvar=False)

    def __call__(self, samples: Tensor) -> float:
        """Frechet distance between ``samples [M, 1, 8, 8]`` and all digits in PCA feature space."""
        from scipy.linalg import sqrtm

        m1, c1 = self._moments(samples.flatten(1).double().numpy())
        m2, c2 = self.reference
        covmean = sqrtm(c1 @ c2).real
        return float(np.sum((m1 - m2) ** 2) + np.trace(c1 + c2 - 2.0 * covmean))


def generate(module: DiffusionModule, num: int, seed: int) -> Tensor:
    """``num`` DDIM-50 samples from a fixed noise seed."""
    with torch.no_grad():
        return ddim_sample(module, probe_noise(num, module.data_shape, seed), 50).sample


def first_step(steps: list[int], values: list[float], above: float) -> int | None:
    """The first step whose value exceeds ``above`` (``None`` if none does)."""
    return next((s for s, v in zip(steps, values, strict=True) if v > above), None)


def fmt(value: float | int | None, digits: int = 3) -> str:
    """Table cell: ``-`` for missing/NaN values."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return str(value) if isinstance(value, int) else f"{value:.{digits}f}"
