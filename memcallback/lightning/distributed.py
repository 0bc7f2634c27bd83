"""The :class:`~memcallback.core.Reducer` of a Lightning trainer: its strategy's collectives."""

from __future__ import annotations

from lightning.pytorch.strategies import Strategy
from torch import Tensor


class StrategyReducer:
    """Reduce through ``trainer.strategy`` (``reduce`` with ``"sum"``, ``reduce_boolean_decision``): one process,
    DDP, FSDP and every other strategy Lightning runs.

    Args:
        strategy: the trainer's strategy.
    """

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        return self.strategy.reduce(tensor.clone(), reduce_op="sum")

    def all_true(self, flag: bool) -> bool:
        return bool(self.strategy.reduce_boolean_decision(bool(flag), all=True))

    def any_true(self, flag: bool) -> bool:
        return bool(self.strategy.reduce_boolean_decision(bool(flag), all=False))
