"""One measurement on CUDA against the same measurement on the CPU, on a fixed small model.

    python -m benchmarks.cost.device_agreement [--probes 16]

The model is ``SmallUNet`` 3x16x16 (base 32, mults [1, 2]) with seed-0 weights trained for a few hundred steps
on 16x16 patches on the CPU (so its spectrum is a trained one), copied to CUDA. ``analyze`` runs at the library
defaults with the same probes and seed on both devices, in fp32 and then with TF32 matmuls and convolutions on
CUDA; printed: the max absolute difference of the per-sample memorization scores and of ``mu`` against the CPU,
and the wall time on each device. The issue's accuracy criterion is 0.02 on the score.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch.nn import functional as F

from memcallback.app.data import PatchesDataModule
from memcallback.app.models import DiffusionModule, SmallUNet
from memcallback.measure.analysis import analyze

TRAIN_STEPS = 300


def fixed_model() -> DiffusionModule:
    torch.manual_seed(0)
    module = DiffusionModule(SmallUNet((3, 16, 16), base_channels=32, channel_mults=(1, 2)))
    data = PatchesDataModule(patch_size=16, num_train=32, seed=0)
    data.setup("fit")
    x = data.unique_train_data()
    optimizer = torch.optim.Adam(module.network.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(1)
    for _ in range(TRAIN_STEPS):
        x0 = x[torch.randint(0, len(x), (32,), generator=generator)]
        t = torch.randint(0, module.schedule.num_timesteps, (32,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        loss = F.mse_loss(module.network(module.schedule.add_noise(x0, noise, t), t, None), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return module.eval()


def timed_analyze(model: DiffusionModule, probes: int) -> tuple[dict[str, torch.Tensor], float]:
    start = time.perf_counter()
    report = analyze(model, num_samples=probes)
    if next(model.parameters()).is_cuda:
        torch.cuda.synchronize()
    stats = report.primary
    return {"score": stats.memorization_score.cpu(), "mu": stats.mu.cpu()}, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probes", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(4)
    if not torch.cuda.is_available():
        raise SystemExit("CUDA is not available: this script compares a CUDA measurement against the CPU.")
    model = fixed_model()
    cpu, cpu_s = timed_analyze(model, args.probes)
    cuda_model = copy.deepcopy(model).cuda()
    print(f"{torch.cuda.get_device_name(0)}; {args.probes} probes, library defaults; CPU {cpu_s:.1f} s")
    print("| CUDA mode | max abs score diff | max abs mu diff | CUDA seconds |")
    print("|---|---|---|---|")
    for name, tf32 in (("fp32", False), ("TF32", True)):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        timed_analyze(cuda_model, args.probes)  # warm-up (kernels, allocator)
        cuda, cuda_s = timed_analyze(cuda_model, args.probes)
        print(f"| {name} | {(cuda['score'] - cpu['score']).abs().max():.2e} | "
              f"{(cuda['mu'] - cpu['mu']).abs().max():.2e} | {cuda_s:.2f} |")


if __name__ == "__main__":
    main()
