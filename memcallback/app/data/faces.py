"""Small grayscale face photographs shipped with scikit-image (``skimage.data.lfw_subset``, Labeled Faces in
the Wild): a private-looking data set of the kind our users fear leaking, with no download."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from memcallback.app.data.base import ArrayDataModule
from memcallback.app.data.patches import near_duplicates

__all__ = ["FacesDataModule"]

NUM_FACES = 100  # lfw_subset(): 100 faces, then 100 non-face crops
FACE_SIZE = 24  # the 25 x 25 crops lose their last row and column, so that two UNet downsamplings divide the side


class FacesDataModule(ArrayDataModule):
    """The 100 face crops of ``skimage.data.lfw_subset()``, ``(1, 24, 24)`` gray in [-1, 1] (``2 x - 1``).

    With ``flips`` every face is also taken mirrored left-right (200 images); mirrors that lie within
    ``dedup_fraction`` of the median nearest-neighbour distance of an earlier image are dropped (a nearly
    symmetric face and its mirror would make the nearest-neighbour ground truth ambiguous). Labels: the face's
    index, so a face and its mirror share one (``num_classes = 100``).

    Args:
        flips: add the left-right mirror of every face.
        dedup_fraction: near-duplicate radius as a fraction of the median nearest-neighbour distance, in [0, 1).
        **kwargs: the common options of ``ArrayDataModule`` (``batch_size``, ``num_train``, ``duplicate``,
            ``duplicate_indices``, ``val_fraction``, ``samples_per_epoch``, ``seed``, ``num_workers``).
    """

    def __init__(self, flips: bool = True, dedup_fraction: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(flips, bool):
            raise ValueError(f"flips must be True or False, got {flips!r}")
        if (isinstance(dedup_fraction, bool) or not isinstance(dedup_fraction, int | float)
                or not 0 <= dedup_fraction < 1):
            raise ValueError(f"dedup_fraction must be a number in [0, 1), got {dedup_fraction!r}")
        self.flips, self.dedup_fraction = flips, float(dedup_fraction)
        self.num_classes = NUM_FACES
        self._data_shape = (1, FACE_SIZE, FACE_SIZE)
        self._check_num_train(2 * NUM_FACES if flips else NUM_FACES)

    def load(self) -> tuple[Tensor, Tensor]:
        """The faces ``[n, 1, 24, 24]`` (mirrors after the originals) and their face indices."""
        try:
            import skimage.data
        except ModuleNotFoundError as err:
            raise ImportError("FacesDataModule needs scikit-image: pip install scikit-image") from err
        faces = torch.from_numpy(skimage.data.lfw_subset()[:NUM_FACES, :FACE_SIZE, :FACE_SIZE].copy()).float()
        images = (2.0 * faces - 1.0)[:, None]
        labels = torch.arange(NUM_FACES)
        if not self.flips:
            return images.contiguous(), labels
        images, labels = torch.cat([images, images.flip(-1)]), torch.cat([labels, labels])
        if self.dedup_fraction > 0:
            flat = images.flatten(1)
            distances = torch.cdist(flat, flat).fill_diagonal_(float("inf"))
            keep = ~near_duplicates(images, self.dedup_fraction * distances.min(dim=1).values.median().item())
            images, labels = images[keep], labels[keep]
        return images.contiguous(), labels
