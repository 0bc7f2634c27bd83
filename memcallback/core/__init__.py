"""The framework-free monitoring core (pure torch): the stop rule and the reduction of a check across ranks."""

from memcallback.core.aggregation import CheckAggregator
from memcallback.core.stopping import StopRule

__all__ = ["CheckAggregator", "StopRule"]
