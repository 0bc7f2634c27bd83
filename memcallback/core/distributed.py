"""How a check's values and decisions are reduced over processes: a three-method interface and two implementations.

The monitoring core never calls a distributed backend itself; it goes through a :class:`Reducer`. Every method
is *collective*: under several processes every rank must call it, in the same order. Provided here:
:class:`NoDistribution` (one process), :class:`CountingReducer` (booleans as a summed count, the base of the
others) and :class:`TorchDistributed` (``torch.distributed``); the Lightning one (``trainer.strategy``) lives in
:mod:`memcallback.lightning`, the accelerate one in :mod:`memcallback.adapters.accelerate`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class Reducer(Protocol):
    """Collective operations over the processes of a training job (one process: identities)."""

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        """The elementwise sum of ``tensor`` over every process (same shape, dtype and device on each)."""
        ...

    def all_true(self, flag: bool) -> bool:
        """Whether ``flag`` is True on every process."""
        ...

    def any_true(self, flag: bool) -> bool:
        """Whether ``flag`` is True on at least one process."""
        ...


class NoDistribution:
    """The :class:`Reducer` of a single process: every reduction returns its input."""

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        return tensor

    def all_true(self, flag: bool) -> bool:
        return bool(flag)

    def any_true(self, flag: bool) -> bool:
        return bool(flag)


class CountingReducer(ABC):
    """A :class:`Reducer` whose booleans travel as a count: one int64 summed with :meth:`all_reduce_sum` on
    :attr:`device` and compared with the number of processes. Subclasses give the sum, the device and the count."""

    device: torch.device

    @abstractmethod
    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        """The elementwise sum of ``tensor`` over every process."""

    @property
    @abstractmethod
    def num_processes(self) -> int:
        """The number of processes the reductions span."""

    def _count(self, flag: bool) -> int:
        return int(self.all_reduce_sum(torch.tensor(int(bool(flag)), device=self.device)).item())

    def all_true(self, flag: bool) -> bool:
        return self._count(flag) == self.num_processes

    def any_true(self, flag: bool) -> bool:
        return self._count(flag) > 0


class TorchDistributed(CountingReducer):
    """The :class:`Reducer` of an initialized ``torch.distributed`` process group (plain DDP, ``accelerate``).

    Booleans travel as one int64 on ``device``: a CUDA device for NCCL, the CPU for gloo (``None``: the current
    CUDA device when the group's backend is NCCL, else the CPU).

    Args:
        group: the process group (``None``: the default group).
        device: where the boolean reductions run.
    """

    def __init__(self, group: object | None = None, device: torch.device | str | None = None) -> None:
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("TorchDistributed needs an initialized process group "
                               "(torch.distributed.init_process_group); use NoDistribution for one process.")
        self.group = group
        if device is None:
            nccl = dist.get_backend(group) == "nccl"
            device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        self.device = torch.device(device)

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        import torch.distributed as dist

        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=self.group)
        return out

    @property
    def num_processes(self) -> int:
        import torch.distributed as dist

        return dist.get_world_size(self.group)


def gather_probes(reducer: Reducer, local: Tensor, rank: int, world_size: int, num_probes: int) -> Tensor:
    """Every rank's per-probe values, in the order of the global probe set, padding dropped.

    Rank ``r`` holds the probes ``r, r + W, r + 2W, ...`` of the padded set (``W`` processes, the same count
    ``n`` on each, see :class:`~memcallback.core.probes.ProbeSet`). Each rank writes its ``[F, n]`` block into
    its slot of a zero ``[W, F, n]`` buffer and the buffers are summed, so one ``all_reduce_sum`` gathers them.

    Args:
        reducer: the collective operations.
        local: ``[F, n]`` this rank's values of ``F`` statistics.
        rank: this process's rank.
        world_size: the number of processes ``W``.
        num_probes: the size of the probe set before padding.

    Returns:
        ``[F, num_probes]`` with column ``g`` the values of global probe ``g``, identical on every rank.
    """
    buffer = local.new_zeros((world_size, *local.shape))
    buffer[rank] = local
    gathered = reducer.all_reduce_sum(buffer)  # [W, F, n]; global probe j * W + r sits at [r, :, j]
    return gathered.permute(1, 2, 0).reshape(local.shape[0], -1)[:, :num_probes]


def max_over_ranks(reducer: Reducer, values: Tensor, rank: int, world_size: int) -> Tensor:
    """The elementwise maximum of ``values [F]`` over every rank, identical on each (one ``all_reduce_sum`` of a
    ``[W, F]`` buffer in which each rank fills its own row, as :func:`gather_probes`)."""
    buffer = values.new_zeros((world_size, *values.shape))
    buffer[rank] = values
    return reducer.all_reduce_sum(buffer).amax(dim=0)
