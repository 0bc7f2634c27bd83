"""Fine-tune a diffusers UNet on a handful of "instance images" with accelerate, watched for memorization.

The loop is the shape of diffusers' DreamBooth / LoRA training scripts (``accelerator.prepare``, DDPM noise,
MSE on the predicted noise, ``accelerator.backward``); memcallback adds six lines (marked ``# memcallback``).
Every ``--check-every`` steps the watch samples a fixed probe set, measures how sharp the learned density is around
each sample, logs ``memorization/...`` through the accelerator's trackers, and stops training when memorization
rises, putting back the weights of the last check at which the model was not memorizing.

    python examples/accelerate_finetune.py                       # tiny UNet on the CPU, a few minutes
    accelerate launch examples/accelerate_finetune.py --size 32 --width 64 --steps 4000 --num-probes 32

W&B runs offline unless ``WANDB_MODE`` says otherwise (``wandb sync`` uploads the run later).
Needs ``pip install memcallback[accelerate]`` (accelerate and diffusers) and scikit-learn for the sample images.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import DDPMScheduler, UNet2DModel
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from memcallback import MemorizationWatch, ProbeConfig, StopConfig
from memcallback.adapters import AcceleratedWatch


def instance_images(num_images: int, size: int, seed: int) -> Tensor:
    """``[num_images, 3, size, size]`` random square crops of scikit-learn's two sample photos, in [-1, 1]."""
    from sklearn.datasets import load_sample_images

    photos = [torch.tensor(image).permute(2, 0, 1).float() / 127.5 - 1 for image in load_sample_images().images]
    generator = torch.Generator().manual_seed(seed)
    crop = 4 * size  # crop a region 4x the target size, then downsample it with antialiasing
    images = []
    for i in range(num_images):
        photo = photos[i % len(photos)]
        top = int(torch.randint(photo.shape[1] - crop, (), generator=generator))
        left = int(torch.randint(photo.shape[2] - crop, (), generator=generator))
        patch = photo[None, :, top:top + crop, left:left + crop]
        images.append(F.interpolate(patch, size=(size, size), mode="bilinear", antialias=True)[0])
    return torch.stack(images).clamp(-1, 1)


def tiny_unet(size: int, width: int) -> UNet2DModel:
    """A two-level UNet2DModel with self-attention at the lower resolution (``width`` channels at the top)."""
    return UNet2DModel(sample_size=size, in_channels=3, out_channels=3, block_out_channels=(width, 2 * width),
                       layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8, attention_head_dim=8)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=8, help="image side in pixels")
    parser.add_argument("--width", type=int, default=16, help="UNet channels at full resolution")
    parser.add_argument("--num-images", type=int, default=4, help="instance images")
    parser.add_argument("--steps", type=int, default=600, help="optimizer steps at most")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--check-every", type=int, default=100, help="steps between memorization checks")
    parser.add_argument("--num-probes", type=int, default=4, help="probe samples per check")
    parser.add_argument("--num-sampling-steps", type=int, default=10, help="DDIM steps per probe sample")
    parser.add_argument("--log-with", default="wandb" if importlib.util.find_spec("wandb") else "none",
                        help="accelerate tracker (wandb, tensorboard, ...) or none; default: wandb when installed")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/accelerate_finetune"))
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "offline")
    torch.manual_seed(args.seed)
    accelerator = Accelerator(log_with=None if args.log_with == "none" else args.log_with, project_dir=args.output_dir)
    accelerator.init_trackers("memcallback-finetune", config={k: str(v) for k, v in vars(args).items()})

    images = instance_images(args.num_images, args.size, args.seed)
    unet = tiny_unet(args.size, args.width)
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.lr)
    loader = DataLoader(TensorDataset(images), batch_size=args.batch_size, shuffle=True, drop_last=True)
    unet, optimizer, loader = accelerator.prepare(unet, optimizer, loader)

    watch = AcceleratedWatch(MemorizationWatch(  # memcallback
        every_n_steps=args.check_every, stop=StopConfig(restore_safe_weights=True),
        probes=ProbeConfig(num_samples=args.num_probes, num_sampling_steps=args.num_sampling_steps)), accelerator,
        safe_dir=args.output_dir / "safe")  # memcallback: the safe weights on disk, beside any checkpoints
    watch.setup(unet, noise_scheduler, train_data=images)  # memcallback

    step, stopped = 0, watch.after_step(0)  # memcallback: the baseline check
    while not stopped and step < args.steps:
        for (clean,) in loader:
            noise = torch.randn_like(clean)
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (clean.shape[0],),
                                      device=clean.device)
            noisy = noise_scheduler.add_noise(clean, noise, timesteps)
            loss = F.mse_loss(unet(noisy, timesteps).sample, noise)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            accelerator.log({"train/loss": loss.item()}, step=step)
            stopped = watch.after_step(step)  # memcallback: check when due; True when memorization rose
            if stopped or step == args.steps:
                break

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:  # the weights of the last safe check when the watch stopped the run
        accelerator.unwrap_model(unet).save_pretrained(args.output_dir / "unet")
        where = f"stopped at step {step}, safe step {watch.watch.safe_step}" if stopped else f"{step} steps"
        accelerator.print(f"UNet ({where}) saved to {args.output_dir / 'unet'}")
    accelerator.end_training()


if __name__ == "__main__":
    main()
