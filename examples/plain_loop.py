"""Watch a diffusion model for memorization in a plain PyTorch training loop (no Lightning, no accelerate).

The model is a small denoiser of your own: anything with the four members of :class:`memcallback.DiffusionModel`
(``schedule``, ``prediction_type``, ``data_shape``, ``model_output(x_t, t, cond=None)``) can be watched.
It learns a handful of 8x8 digits, each repeated many times per epoch, so it soon reproduces them; the watch
measures the sharpness of the learned density every ``--check-every`` steps and says when to stop.

    python examples/plain_loop.py --steps 3000 --check-every 250
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from memcallback import MemorizationWatch, NoiseSchedule, ProbeConfig, StopConfig


class Denoiser(nn.Module):
    """An MLP noise predictor ``eps_hat(x_t, t)`` on flattened images, with a sinusoidal time embedding."""

    prediction_type = "epsilon"

    def __init__(self, data_shape: tuple[int, ...], hidden: int = 256, num_timesteps: int = 1000) -> None:
        super().__init__()
        self.data_shape, self.schedule = data_shape, NoiseSchedule.linear(num_timesteps)
        dim = math.prod(data_shape)
        self.net = nn.Sequential(nn.Linear(dim + 32, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, dim))

    def model_output(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """``eps_hat(x_t, t)``, ``[B, *data_shape]``; ``cond`` is unused (an unconditional model)."""
        freqs = torch.exp(-math.log(1000.0) * torch.arange(16, device=x_t.device) / 16)
        angles = t.float()[:, None] * freqs
        features = torch.cat([x_t.flatten(1), angles.sin(), angles.cos()], dim=1)
        return self.net(features).view_as(x_t)


def digits(num_images: int) -> Tensor:
    """``[num_images, 1, 8, 8]`` of scikit-learn's handwritten digits, in [-1, 1]."""
    from sklearn.datasets import load_digits

    return torch.as_tensor(load_digits().images[:num_images], dtype=torch.float32).unsqueeze(1) / 8 - 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-images", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--check-every", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    images = digits(args.num_images)
    model = Denoiser(tuple(images.shape[1:]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)

    watch = MemorizationWatch(every_n_steps=args.check_every, probes=ProbeConfig(num_samples=16),
                              stop=StopConfig(restore_safe_weights=True))
    watch.setup(model, train_data=images)
    for step in range(args.steps + 1):
        if step > 0:  # one optimizer step on a batch drawn with replacement from the images
            x0 = images[torch.randint(len(images), (args.batch_size,))]
            t = torch.randint(0, model.schedule.num_timesteps, (args.batch_size,))
            noise = torch.randn_like(x0)
            loss = F.mse_loss(model.model_output(model.schedule.add_noise(x0, noise, t), t), noise)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if watch.due(step):
            result = watch.check(model, step)
            print(result.message)
            if result.stop:
                print(f"{result.reason} Weights of step {watch.safe_step} restored: {result.restored}.")
                break


if __name__ == "__main__":
    main()
