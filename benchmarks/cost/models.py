"""Models and data for the check-cost benchmark: build, train once, cache the weights.

    python -m benchmarks.cost.models [--only NAME]     # trains whatever is not cached yet

Models (all noise predictors trained as DDPMs with the linear schedule, T = 1000):

* ``mlp-digits``: ``ResidualMLP`` (hidden 256 x 3, as configs/model/mlp.yaml) on all sklearn digits, d = 64.
* ``unet32-patches``: ``SmallUNet`` 3x32x32 (base 32, mults [1, 2], as configs/model/unet.yaml with 3 channels)
  on every 32x32 RGB patch of the pool below: the generalizing model.
* ``unet32-memorize``: the same network on :data:`NUM_MEMORIZE` patches of the pool: the memorizing model that
  gives the nearest-neighbour label positives.
* ``ddpm-cifar10``: a diffusers ``UNet2DModel`` in the DDPM-CIFAR10 configuration (35.7 M parameters), random
  weights (never trained here).

Patches: the 32x32 RGB training patches of ``memcallback.app.data.PatchesDataModule`` (photos scikit-learn
ships, held-out split and near-duplicate removal as in ``data=patches``), seed 0.

Training runs on one CPU thread with Adam at batch :data:`TRAIN_BATCH` without EMA; the state_dicts are cached
with the training data under ``benchmarks/outputs/weights/`` so reruns skip training.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from memcallback.app.data import PatchesDataModule
from memcallback.app.models import DiffusionModule, ResidualMLP, SmallUNet

OUTPUTS = Path(__file__).resolve().parents[1] / "outputs"
WEIGHTS = OUTPUTS / "weights"
TRAIN_BATCH = 32
#: Patches the memorizing model is trained on.
NUM_MEMORIZE = 4
#: The weights this many steps before the end are kept too: the model of the previous check (warm starts).
PREVIOUS_CHECK_STEPS = 250


@dataclass(frozen=True)
class Recipe:
    """How one cached model is built and trained."""

    build: Callable[[], DiffusionModule]
    data: Callable[[], Tensor]
    steps: int
    lr: float


def digits() -> Tensor:
    """All 1797 sklearn digits as ``[N, 1, 8, 8]`` in [-1, 1]."""
    from sklearn.datasets import load_digits

    return torch.tensor(load_digits().data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 8.0 - 1.0


def patches32(num_train: int | None = None) -> Tensor:
    """The distinct 32x32 RGB training patches ``[N, 3, 32, 32]`` in [-1, 1] of ``PatchesDataModule`` (seed 0)."""
    module = PatchesDataModule(patch_size=32, num_train=num_train, seed=0)
    module.setup("fit")
    return module.unique_train_data()


def memorize_subset() -> Tensor:
    """:data:`NUM_MEMORIZE` training patches (the data module's own subset option)."""
    return patches32(NUM_MEMORIZE)


def mlp_digits() -> DiffusionModule:
    return DiffusionModule(ResidualMLP((1, 8, 8), hidden=256, num_blocks=3, time_embed_dim=128))


def unet32() -> DiffusionModule:
    return DiffusionModule(SmallUNet((3, 32, 32), base_channels=32, channel_mults=(1, 2), num_res_blocks=1))


def ddpm_cifar10() -> nn.Module:
    """diffusers ``UNet2DModel`` as in DDPM-CIFAR10 (``google/ddpm-cifar10-32``), random weights, as a
    :class:`memcallback.adapters.DiffusersModel`."""
    from diffusers import DDPMScheduler, UNet2DModel

    from memcallback.adapters import DiffusersModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
        block_out_channels=(128, 256, 256, 256),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    )
    return DiffusersModel(unet, DDPMScheduler(num_train_timesteps=1000))


RECIPES = {
    "mlp-digits": Recipe(mlp_digits, digits, steps=1500, lr=1e-3),
    "unet32-patches": Recipe(unet32, patches32, steps=1500, lr=1e-3),
    "unet32-memorize": Recipe(unet32, memorize_subset, steps=700, lr=1e-3),
}


def denoising_loss(module: DiffusionModule, x0: Tensor, generator: torch.Generator) -> Tensor:
    """The DDPM epsilon loss ``||eps_hat(x_t, t) - eps||^2`` at uniform ``t``, noise from ``generator``."""
    t = torch.randint(0, module.schedule.num_timesteps, (x0.shape[0],), generator=generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    return F.mse_loss(module.network(module.schedule.add_noise(x0, noise, t), t, None), noise)


def trained(name: str, log: Callable[[str], None] = print, previous: bool = False,
            device: torch.device | str = "cpu") -> tuple[DiffusionModule, Tensor]:
    """The model ``name`` of :data:`RECIPES` with cached (or freshly trained, on ``device``) weights, and its
    training data (on the CPU).

    With ``previous``, the weights :data:`PREVIOUS_CHECK_STEPS` steps before the end (trains if needed).
    """
    recipe = RECIPES[name]
    torch.manual_seed(0)
    module, data = recipe.build(), recipe.data()
    path = WEIGHTS / (f"{name}-previous.pt" if previous else f"{name}.pt")
    if path.exists():
        cached = torch.load(path, weights_only=True)
        module.load_state_dict(cached["state_dict"])
        return module.eval(), cached["train_data"]
    module.to(device)
    optimizer = torch.optim.Adam(module.network.parameters(), lr=recipe.lr)
    generator = torch.Generator().manual_seed(1)
    start = time.perf_counter()
    for step in range(recipe.steps):
        batch = data[torch.randint(0, len(data), (TRAIN_BATCH,), generator=generator)].to(device)
        loss = denoising_loss(module, batch, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step + 1 == recipe.steps - PREVIOUS_CHECK_STEPS:
            WEIGHTS.mkdir(parents=True, exist_ok=True)
            state = {key: value.cpu() for key, value in module.state_dict().items()}
            torch.save({"state_dict": state, "train_data": data}, WEIGHTS / f"{name}-previous.pt")
        if step % 100 == 0 or step + 1 == recipe.steps:
            log(f"{name}: step {step} loss {loss.item():.4f} ({time.perf_counter() - start:.0f} s)")
    WEIGHTS.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": module.cpu().state_dict(), "train_data": data}, WEIGHTS / f"{name}.pt")
    return trained(name, log, previous) if previous else (module.cpu().eval(), data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(RECIPES), action="append")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in args.only or RECIPES:
        trained(name)


if __name__ == "__main__":
    main()
