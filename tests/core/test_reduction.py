"""The reductions over processes: gathering per-probe values in probe order, and torch.distributed."""

import os

import pytest
import torch

from memcallback.core import NoDistribution, ProbeConfig, ProbeSet, TorchDistributed
from memcallback.core.distributed import gather_probes
from memcallback.measure.analysis import probe_noise


class Stacked:
    """All ranks' buffers at once (one process plays every rank): the sum is over the given buffers."""

    def __init__(self, buffers: list[torch.Tensor]) -> None:
        self.buffers = buffers

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return sum(self.buffers[1:], self.buffers[0])


@pytest.mark.parametrize(("num_probes", "world_size"), [(8, 1), (8, 2), (8, 3), (2, 4)])
def test_shards_are_equal_padded_and_gather_back_in_probe_order(num_probes: int, world_size: int) -> None:
    config = ProbeConfig(num_samples=num_probes)
    shards = [ProbeSet.build(config, (3,), rank, world_size) for rank in range(world_size)]
    assert len({s.noise.shape[0] for s in shards}) == 1  # the same number of probes (network calls) everywhere
    assert sum(int(s.valid.sum()) for s in shards) == num_probes
    full = probe_noise(num_probes, (3,), config.seed)
    values = [s.noise[:, 0].double()[None] for s in shards]  # one statistic: each probe's first coordinate
    buffers = []
    for rank, local in enumerate(values):
        buffer = local.new_zeros((world_size, *local.shape))
        buffer[rank] = local
        buffers.append(buffer)
    for rank, local in enumerate(values):
        gathered = gather_probes(Stacked(buffers), local, rank, world_size, num_probes)
        assert torch.equal(gathered[0], full[:, 0].double())


def test_torch_distributed_in_a_one_process_gloo_group(tmp_path) -> None:
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    import torch.distributed as dist
    from tiny_training import free_port

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        reducer = TorchDistributed()
        x = torch.arange(3.0)
        assert torch.equal(reducer.all_reduce_sum(x), x) and x.tolist() == [0.0, 1.0, 2.0]  # input untouched
        assert reducer.all_true(True) and not reducer.all_true(False)
        assert reducer.any_true(True) and not reducer.any_true(False)
    finally:
        dist.destroy_process_group()
    with pytest.raises(RuntimeError, match="init_process_group"):
        TorchDistributed()
    assert NoDistribution().all_true(True) and not NoDistribution().any_true(False)
