"""MNIST and CIFAR-10 through torchvision, when it is installed and the files are on disk."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor

from memcallback.app.data.base import ArrayDataModule

__all__ = ["TorchvisionDataModule"]

# name -> (torchvision class, item shape, a file that exists once the training split is on disk)
_SETS = {
    "mnist": ("MNIST", (1, 28, 28), Path("MNIST", "raw", "train-images-idx3-ubyte")),
    "cifar10": ("CIFAR10", (3, 32, 32), Path("cifar-10-batches-py", "data_batch_1")),
}


def _import_torchvision() -> ModuleType:
    try:
        import torchvision
    except ImportError as error:
        raise ImportError(
            "TorchvisionDataModule needs torchvision, which is not installed: `pip install torchvision` "
            "(a build matching your torch version), or use DigitsDataModule / ImageFolderDataModule"
        ) from error
    return torchvision


class TorchvisionDataModule(ArrayDataModule):
    """The training split of MNIST or CIFAR-10, read with torchvision from ``root``, scaled to [-1, 1].

    Items are ``(1, 28, 28)`` for MNIST and ``(3, 32, 32)`` for CIFAR-10, with 10 classes. Nothing is
    downloaded unless ``download=True`` (then ``prepare_data`` fetches the files into ``root``). The
    held-out split comes from the training split, like every data module here.

    Args:
        name: ``"mnist"`` or ``"cifar10"``.
        root: folder holding (or receiving) torchvision's files.
        download: allow torchvision to download the data set.
        **kwargs: the common options of ``ArrayDataModule`` (``batch_size``, ``num_train``,
            ``duplicate``, ``duplicate_indices``, ``val_fraction``, ``samples_per_epoch``, ``seed``,
            ``num_workers``).

    Raises:
        ImportError: when torchvision is not installed.
        FileNotFoundError: (in ``setup``) when the files are missing and ``download`` is off.
    """

    def __init__(self, name: str = "mnist", root: str | Path = "data", download: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        if name not in _SETS:
            raise ValueError(f"name must be one of {sorted(_SETS)}, got {name!r}")
        _import_torchvision()
        self.name = name
        self.root = Path(root).expanduser()
        self.download = download
        self.num_classes = 10
        self._data_shape = _SETS[name][1]

    def prepare_data(self) -> None:
        """Download the data set into ``root`` when ``download=True``."""
        if self.download:
            getattr(_import_torchvision().datasets, _SETS[self.name][0])(self.root, train=True, download=True)

    def load(self) -> tuple[Tensor, Tensor]:
        """The training split ``[N, C, H, W]`` in [-1, 1] and its labels."""
        class_name, _, marker = _SETS[self.name]
        if not self.download and not (self.root / marker).is_file():
            raise FileNotFoundError(
                f"{class_name} not found under root={str(self.root)!r} (looked for {self.root / marker}); "
                "put torchvision's files there or pass download=True"
            )
        dataset = getattr(_import_torchvision().datasets, class_name)(self.root, train=True, download=self.download)
        pixels = torch.as_tensor(np.asarray(dataset.data))
        x = pixels.unsqueeze(1) if pixels.dim() == 3 else pixels.permute(0, 3, 1, 2)
        return x.float() / 127.5 - 1.0, torch.as_tensor(np.asarray(dataset.targets), dtype=torch.long)
