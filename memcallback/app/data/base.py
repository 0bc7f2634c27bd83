"""``ArrayDataModule``: the in-memory data module that every data set of the project builds on."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from memcallback.app.data.sampler import ReplacementSampler
from memcallback.app.data.splits import ForcedSelection, derived_seed, num_held_out, plan_split

__all__ = ["ArrayDataModule"]

# Random streams derived from ``seed`` (see ``derived_seed``).
SPLIT_STREAM = 0
LOADER_STREAM = 1
GENERATION_STREAM = 2


def _collate_pair(batch: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    xs, ys = zip(*batch, strict=True)
    return torch.stack(xs), torch.stack(ys)


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _check_duplication(duplicate: int, duplicate_indices: object) -> None:
    _check_int("duplicate", duplicate, 1)
    if isinstance(duplicate_indices, int) and not isinstance(duplicate_indices, bool):
        _check_int("duplicate_indices", duplicate_indices, 0)
        names_some = duplicate_indices > 0
    elif isinstance(duplicate_indices, Iterable) and not isinstance(duplicate_indices, str):
        positions = list(duplicate_indices)
        for position in positions:
            _check_int("every entry of duplicate_indices", position, 0)
        if len(set(positions)) != len(positions):
            raise ValueError(f"duplicate_indices must not repeat a position, got {positions}")
        names_some = len(positions) > 0
    else:
        raise ValueError(f"duplicate_indices must be an int or a list of ints, got {duplicate_indices!r}")
    if duplicate > 1 and not names_some:
        raise ValueError(
            f"duplicate={duplicate} has no effect with duplicate_indices={duplicate_indices!r}: set "
            "duplicate_indices to how many training images to repeat, or to their positions"
        )


class ArrayDataModule(L.LightningDataModule):
    """Images (or points) held in memory as one tensor, with a held-out split, subset and duplication.

    Use it directly with ``data=`` (and optionally ``labels=``), or subclass it and override ``load()``.
    ``setup()`` loads the data, holds out ``val_fraction`` of it, draws the training subset
    (``num_train``) and repeats chosen training images (``duplicate``), all fixed by ``seed``.

    Batches are ``(x, y)``: ``x`` is ``[B, *data_shape]`` float32, ``y`` is ``[B]`` int64 labels, or -1
    when the data set has none. The training loader draws ``samples_per_epoch`` images uniformly with
    replacement (``ReplacementSampler``, its own ``torch.Generator`` seeded from ``seed``), so even a
    16-image training set gives full batches; the validation loader goes through the held-out images in
    order.

    After ``setup()``:

    - ``train_data`` ``[N, *data_shape]``: the training images with duplicates, what the loader serves;
      ``train_labels`` ``[N]`` or ``None``;
    - ``val_data``, ``val_labels``: the held-out images, never in the training set;
    - ``train_indices`` / ``train_copies`` ``[n]``: the distinct training images (indices into the loaded
      set) and how often each appears in ``train_data``; ``val_indices`` likewise;
    - ``unique_train_data()``: the ``n`` distinct training images, the reference set of the
      nearest-neighbour ground truth (``memcallback.measure.ground_truth``).

    Args:
        data: ``[num_items, *shape]`` data (tensor or array); only for ``ArrayDataModule`` itself.
        labels: ``[num_items]`` integer labels for ``data``, or ``None``.
        batch_size: batch size of both loaders.
        num_train: distinct training images (a seeded random subset of the non-held-out ones); ``None``
            uses all of them.
        duplicate: total copies of each image named by ``duplicate_indices`` (1: no duplication).
        duplicate_indices: which training images to duplicate: an int ``n`` for the first ``n`` images of
            the (random) training subset, or a sequence of positions in ``unique_train_data()``. Must name
            at least one image when ``duplicate > 1``.
        val_fraction: fraction of the data held out for validation, taken before the training subset, in
            [0, 1).
        samples_per_epoch: training images drawn per epoch; ``None`` means ``max(len(train_data),
            batch_size)``, at least one full batch.
        seed: seed of the split, the subset and the training order (and of generated data sets).
        num_workers: loader worker processes.
        num_classes: number of label values; inferred from ``labels`` when ``None``.

    Raises:
        ValueError: on an argument out of range; the message names it and what it accepts.
    """

    def __init__(
        self,
        data: Tensor | np.ndarray | None = None,
        labels: Tensor | np.ndarray | Sequence[int] | None = None,
        *,
        batch_size: int = 128,
        num_train: int | None = None,
        duplicate: int = 1,
        duplicate_indices: int | Sequence[int] = 0,
        val_fraction: float = 0.1,
        samples_per_epoch: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        overrides_load = type(self).load is not ArrayDataModule.load
        if data is None and not overrides_load:
            raise ValueError("ArrayDataModule needs data=[num_items, *shape] (or use a subclass that loads it)")
        if data is not None and overrides_load:
            raise ValueError(f"{type(self).__name__} loads its own data; pass data= only to ArrayDataModule")
        _check_int("batch_size", batch_size, 1)
        if num_train is not None:
            _check_int("num_train", num_train, 1)
        _check_duplication(duplicate, duplicate_indices)
        if isinstance(val_fraction, bool) or not isinstance(val_fraction, int | float) or not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be a float in [0, 1), got {val_fraction!r}")
        if samples_per_epoch is not None:
            _check_int("samples_per_epoch", samples_per_epoch, 1)
        _check_int("seed", seed, 0)
        _check_int("num_workers", num_workers, 0)
        if num_classes is not None:
            _check_int("num_classes", num_classes, 1)

        self.batch_size = batch_size
        self.num_train = num_train
        self.duplicate = duplicate
        self.duplicate_indices = duplicate_indices
        self.val_fraction = float(val_fraction)
        self.samples_per_epoch = samples_per_epoch
        self.seed = seed
        self.num_workers = num_workers
        self.num_classes = num_classes
        self._data_shape: tuple[int, ...] | None = None

        self.train_data: Tensor | None = None
        self.train_labels: Tensor | None = None
        self.val_data: Tensor | None = None
        self.val_labels: Tensor | None = None
        self.train_indices: Tensor | None = None
        self.train_copies: Tensor | None = None
        self.val_indices: Tensor | None = None
        self._unique_train: Tensor | None = None
        self._loader_generator: torch.Generator | None = None

        self._data: Tensor | None = None
        self._labels: Tensor | None = None
        if data is not None:
            self._data, self._labels = self._as_tensors(data, labels)
            self._data_shape = tuple(self._data.shape[1:])
            if self.num_classes is None and self._labels is not None:
                self.num_classes = int(self._labels.max()) + 1
            self._check_num_train(len(self._data))

    @staticmethod
    def _as_tensors(
        data: Tensor | np.ndarray, labels: Tensor | np.ndarray | Sequence[int] | None
    ) -> tuple[Tensor, Tensor | None]:
        x = torch.as_tensor(data).float()
        if x.dim() < 2 or len(x) == 0:
            raise ValueError(f"data must be a non-empty [num_items, *shape] array, got shape {tuple(x.shape)}")
        if labels is None:
            return x, None
        y = torch.as_tensor(labels)
        if y.shape != (len(x),) or y.is_floating_point() or y.is_complex():
            raise ValueError(f"labels must be {len(x)} integers (one per item), got shape {tuple(y.shape)}")
        if len(y) and int(y.min()) < 0:
            raise ValueError("labels must be >= 0 (-1 is reserved for 'no label' in batches)")
        return x, y.long()

    def _check_num_train(self, num_candidates: int, num_always: int = 0) -> None:
        """Fail early when ``num_train`` cannot fit (``setup`` does the complete check).

        Args:
            num_candidates: items that may be held out.
            num_always: items always trained on and never held out.
        """
        available = num_candidates - num_held_out(num_candidates, self.val_fraction) + num_always
        if self.num_train is not None and self.num_train > available:
            raise ValueError(
                f"num_train={self.num_train} is larger than the {available} images available for "
                f"training ({num_candidates + num_always} in the data set, minus the "
                f"val_fraction={self.val_fraction} split)"
            )

    @property
    def data_shape(self) -> tuple[int, ...]:
        """Shape of one item, e.g. ``(1, 8, 8)``; known before ``setup()`` for every built-in data set."""
        if self._data_shape is None:
            raise RuntimeError(f"{type(self).__name__}.data_shape is known only after setup()")
        return self._data_shape

    def load(self) -> tuple[Tensor, Tensor | None]:
        """Return all the data, ``[num_items, *shape]`` float32, and its labels (int64) or ``None``.

        Subclasses override this; ``ArrayDataModule`` returns the arrays it was given.
        """
        assert self._data is not None  # guaranteed by __init__
        return self._data, self._labels

    def forced_selection(self, labels: Tensor | None, generator: torch.Generator) -> ForcedSelection:
        """Images the data set always (or never) trains on; none by default. Subclasses override this.

        Args:
            labels: the loaded labels, or ``None``.
            generator: the split's generator, for any random choice.
        """
        return ForcedSelection()

    def setup(self, stage: str | None = None) -> None:
        """Load the data and build the splits (once; later calls do nothing)."""
        if self.train_data is not None:
            return
        data, labels = self._as_tensors(*self.load())
        if self._data_shape is not None and tuple(data.shape[1:]) != self._data_shape:
            raise RuntimeError(f"loaded items of shape {tuple(data.shape[1:])}, expected {self._data_shape}")
        self._data_shape = tuple(data.shape[1:])
        generator = torch.Generator().manual_seed(derived_seed(self.seed, SPLIT_STREAM))
        split = plan_split(
            len(data),
            val_fraction=self.val_fraction,
            num_train=self.num_train,
            duplicate=self.duplicate,
            duplicate_indices=self.duplicate_indices,
            generator=generator,
            forced=self.forced_selection(labels, generator),
        )
        self.train_indices, self.train_copies, self.val_indices = (
            split.train_indices,
            split.train_copies,
            split.val_indices,
        )
        self._unique_train = data[split.train_indices]
        self.train_data = self._unique_train.repeat_interleave(split.train_copies, dim=0)
        self.val_data = data[split.val_indices]
        if labels is not None:
            self.train_labels = labels[split.train_indices].repeat_interleave(split.train_copies)
            self.val_labels = labels[split.val_indices]
        self._loader_generator = torch.Generator().manual_seed(derived_seed(self.seed, LOADER_STREAM))

    def _require_setup(self) -> None:
        if self.train_data is None:
            raise RuntimeError(f"call {type(self).__name__}.setup() first")

    def unique_train_data(self) -> Tensor:
        """The distinct training images ``[n, *data_shape]``, without duplicates, in ``train_indices`` order."""
        self._require_setup()
        assert self._unique_train is not None
        return self._unique_train

    def heldout_data(self) -> Tensor:
        """The held-out images ``[m, *data_shape]`` (``val_data``; empty when ``val_fraction == 0``): the monitor's
        reference for the sharpness gap."""
        self._require_setup()
        assert self.val_data is not None
        return self.val_data

    def _dataset(self, x: Tensor, y: Tensor | None) -> TensorDataset:
        return TensorDataset(x, y if y is not None else torch.full((len(x),), -1, dtype=torch.long))

    def _loader(self, x: Tensor, y: Tensor | None, sampler: ReplacementSampler | None) -> DataLoader:
        """``(x, y)`` batches in order, or in the order ``sampler`` draws; workers as configured."""
        return DataLoader(self._dataset(x, y), batch_size=self.batch_size, sampler=sampler, shuffle=False,
                          drop_last=False, num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          collate_fn=_collate_pair)

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches drawn with replacement, ``samples_per_epoch`` images per epoch."""
        self._require_setup()
        assert self.train_data is not None and self._loader_generator is not None
        num_samples = self.samples_per_epoch or max(len(self.train_data), self.batch_size)
        sampler = ReplacementSampler(len(self.train_data), num_samples, self._loader_generator)
        return self._loader(self.train_data, self.train_labels, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        """The held-out images in a fixed order (an empty loader when ``val_fraction == 0``)."""
        self._require_setup()
        assert self.val_data is not None
        return self._loader(self.val_data, self.val_labels, sampler=None)
