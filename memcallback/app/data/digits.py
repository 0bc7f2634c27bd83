"""scikit-learn's bundled 8x8 handwritten digits: the offline default data set."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from memcallback.app.data.base import ArrayDataModule
from memcallback.app.data.splits import ForcedSelection

__all__ = ["DigitsDataModule"]

DIGITS_SHAPE = (1, 8, 8)
NUM_DIGITS = 1797


class DigitsDataModule(ArrayDataModule):
    """The 1,797 8x8 digits of ``sklearn.datasets.load_digits`` (no download), 10 classes.

    Pixels take the 17 gray levels 0..16, mapped linearly onto [-1, 1] (``x / 8 - 1``); items are
    ``(1, 8, 8)`` float32 and labels are the digits 0..9.

    ``duplicate_class`` reproduces a classic memorization setup: one class is represented in training by
    a single image (chosen with ``seed`` among that class's images, and never held out) repeated
    ``duplicate_class_copies`` times, while the other classes stay diverse. The other images of that
    class are kept out of training (those drawn into the validation split stay there). The image comes
    last in ``unique_train_data()`` and counts towards ``num_train``.

    Args:
        duplicate_class: the digit to collapse onto one repeated image, or ``None``.
        duplicate_class_copies: copies of that image; the default, 160, is about the size of one class
            in the training split, so the class keeps its usual weight.
        **kwargs: the common options of ``ArrayDataModule`` (``batch_size``, ``num_train``,
            ``duplicate``, ``duplicate_indices``, ``val_fraction``, ``samples_per_epoch``, ``seed``,
            ``num_workers``).
    """

    def __init__(self, duplicate_class: int | None = None, duplicate_class_copies: int = 160, **kwargs: Any):
        super().__init__(**kwargs)
        if duplicate_class is not None and (isinstance(duplicate_class, bool) or duplicate_class not in range(10)):
            raise ValueError(f"duplicate_class must be a digit 0..9 or None, got {duplicate_class!r}")
        if (
            isinstance(duplicate_class_copies, bool)
            or not isinstance(duplicate_class_copies, int)
            or duplicate_class_copies < 1
        ):
            raise ValueError(f"duplicate_class_copies must be an int >= 1, got {duplicate_class_copies!r}")
        self.duplicate_class = duplicate_class
        self.duplicate_class_copies = duplicate_class_copies
        self.num_classes = 10
        self._data_shape = DIGITS_SHAPE
        self._check_num_train(NUM_DIGITS)

    def load(self) -> tuple[Tensor, Tensor]:
        """All 1,797 digits scaled to [-1, 1], ``[1797, 1, 8, 8]``, and their labels."""
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
        return x, torch.as_tensor(digits.target, dtype=torch.long)

    def forced_selection(self, labels: Tensor | None, generator: torch.Generator) -> ForcedSelection:
        """Pin one image of ``duplicate_class`` with its copies and keep the rest of the class out."""
        if self.duplicate_class is None:
            return ForcedSelection()
        assert labels is not None
        members = torch.nonzero(labels == self.duplicate_class).squeeze(1)
        chosen = members[torch.randint(len(members), (1,), generator=generator)]
        return ForcedSelection(
            always=chosen,
            copies=torch.tensor([self.duplicate_class_copies]),
            never=members[members != chosen],
        )
