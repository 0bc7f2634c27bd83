"""Two ranks (gloo, CPU) measure a model sharded with FSDP2 ``fully_shard``; launched by test_fsdp.py.

Usage: python -m torch.distributed.run --nproc-per-node=2 fsdp_script.py OUT_DIR. Each rank writes
OUT_DIR/rank{r}.json: the values of one check with the dense solver, of one with a Krylov budget (forward-mode
JVP), the same for the unsharded model in one process, and the setup errors of the settings a sharded model
cannot use.
"""

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from memcallback.core import MemorizationWatch, NoDistribution, ProbeConfig, TorchDistributed
from memcallback.diffusion import NoiseSchedule
from memcallback.measure.sharpness import SharpnessConfig

PROBES = ProbeConfig(num_samples=5, num_sampling_steps=4)  # 5 probes over 2 ranks: one padding probe
SETTINGS = {"dense": SharpnessConfig(k=2, solver="dense"),
            "budget": SharpnessConfig(k=2, solver="lanczos", krylov_steps=4, jvp="forward")}
REFUSED = {"to_tol": SharpnessConfig(k=2, solver="lanczos", krylov_steps=None, jvp="forward"),
           "double_backward": SharpnessConfig(k=2, solver="lanczos")}


class Net(nn.Module):
    """A small MLP noise predictor on 4-dimensional data, identical on every rank."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.hidden, self.out = nn.Linear(5, 32), nn.Linear(32, 4)
        self.schedule, self.prediction_type, self.data_shape = NoiseSchedule.linear(100), "epsilon", (4,)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.hidden(torch.cat([x, t[:, None].float() / 100], dim=1))))

    def model_output(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self(x_t, torch.as_tensor(t).expand(x_t.shape[0]))


def check(model: nn.Module, sharpness: SharpnessConfig, **setup) -> dict[str, float]:
    watch = MemorizationWatch(probes=PROBES, sharpness=sharpness)
    watch.setup(model, **setup)
    result = watch.check(model, 0)
    assert not result.failed, result.error
    return result.scalars


def main(out: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    rank, world = dist.get_rank(), dist.get_world_size()
    report = {name: {"single": check(Net(), s, reducer=NoDistribution())} for name, s in SETTINGS.items()}
    model = fully_shard(Net(), mesh=init_device_mesh("cpu", (world,)))
    for name, sharpness in SETTINGS.items():
        report[name]["sharded"] = check(model, sharpness, rank=rank, world_size=world, reducer=TorchDistributed())
    for name, sharpness in REFUSED.items():
        try:
            check(model, sharpness, rank=rank, world_size=world, reducer=TorchDistributed())
            report[name] = "accepted"
        except ValueError as err:
            report[name] = str(err)
    (out / f"rank{rank}.json").write_text(json.dumps(report))
    dist.barrier()  # both ranks have written their results
    # gloo's teardown at interpreter exit can abort ("terminate called without an active exception") on a loaded
    # machine, after the work under test is done: leave without it
    os._exit(0)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
