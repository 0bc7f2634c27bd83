"""Lightning glue: the :class:`MemorizationMonitor` callback and where its scalars go."""

from memcallback.lightning.callback import MemorizationMonitor

__all__ = ["MemorizationMonitor"]
