"""A folder of image files, loaded into memory with PIL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from memcallback.app.data.base import ArrayDataModule

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderDataModule"]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


class ImageFolderDataModule(ArrayDataModule):
    """All images under ``root`` (searched recursively), as ``(channels, image_size, image_size)``.

    Each image is converted to grayscale (``channels=1``) or RGB (``channels=3``), center-cropped to a
    square and resized (bicubic) to ``image_size``, then scaled from [0, 255] to [-1, 1]. The whole set
    is held in memory, so this suits the small sets used to study memorization.

    With ``class_subdirs=True`` the layout is torchvision's ``ImageFolder``: every immediate
    subdirectory of ``root`` is a class (labels in sorted name order) and images directly in ``root``
    are ignored; otherwise the set has no labels.

    Args:
        root: the folder.
        image_size: side of the square output images, ``>= 1``.
        channels: 1 (grayscale) or 3 (RGB).
        class_subdirs: read labels from the subdirectory names.
        **kwargs: the common options of ``ArrayDataModule`` (``batch_size``, ``num_train``,
            ``duplicate``, ``duplicate_indices``, ``val_fraction``, ``samples_per_epoch``, ``seed``,
            ``num_workers``).

    Raises:
        FileNotFoundError: when ``root`` is not a directory, or (in ``setup``) holds no image files.
    """

    def __init__(
        self,
        root: str | Path,
        image_size: int = 32,
        channels: int = 3,
        class_subdirs: bool = False,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be an int >= 1, got {image_size!r}")
        if channels not in (1, 3) or isinstance(channels, bool):
            raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder root={str(root)!r} does not exist or is not a directory")
        self.image_size = image_size
        self.channels = channels
        self.class_subdirs = class_subdirs
        self.class_names: list[str] | None = None
        self._data_shape = (channels, image_size, image_size)

    def _read(self, path: Path) -> Tensor:
        from PIL import Image, ImageOps, UnidentifiedImageError

        try:
            with Image.open(path) as image:
                image = image.convert("L" if self.channels == 1 else "RGB")
                image = ImageOps.fit(image, (self.image_size, self.image_size), Image.Resampling.BICUBIC)
                pixels = np.asarray(image, dtype=np.uint8)
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"cannot read image file {path}: {error}") from error
        x = torch.from_numpy(pixels.copy()).float()
        x = x.unsqueeze(0) if self.channels == 1 else x.permute(2, 0, 1)
        return x / 127.5 - 1.0

    def load(self) -> tuple[Tensor, Tensor | None]:
        """All images ``[num_items, channels, image_size, image_size]`` in [-1, 1], labels if any."""
        if self.class_subdirs:
            class_dirs = sorted(p for p in self.root.iterdir() if p.is_dir() and _image_files(p))
            files_per_class = [_image_files(p) for p in class_dirs]
        else:
            files_per_class = [_image_files(self.root)]
        files = [f for class_files in files_per_class for f in class_files]
        if not files:
            where = "in any subdirectory of" if self.class_subdirs else "under"
            raise FileNotFoundError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) found {where} {self.root}")
        images = torch.stack([self._read(f) for f in files])
        if not self.class_subdirs:
            return images, None
        self.class_names = [p.name for p in class_dirs]
        self.num_classes = len(class_dirs)
        counts = torch.tensor([len(fs) for fs in files_per_class])
        return images, torch.arange(len(class_dirs)).repeat_interleave(counts)
