import lightning as L
import numpy as np
import pytest
import torch

from memcallback.app.data import ArrayDataModule, ReplacementSampler


def _data(n=40):
    return torch.arange(n * 4, dtype=torch.float32).reshape(n, 1, 2, 2)


def _module(**kwargs):
    dm = ArrayDataModule(_data(), **kwargs)
    dm.setup("fit")
    return dm


def test_shapes_splits_and_unique_training_data():
    dm = _module(num_train=8, duplicate=3, duplicate_indices=2, batch_size=4)
    assert dm.data_shape == (1, 2, 2)
    assert dm.val_data.shape == (4, 1, 2, 2)
    assert dm.train_data.shape == (8 + 2 * 2, 1, 2, 2)
    unique = dm.unique_train_data()
    assert unique.shape == (8, 1, 2, 2)
    assert len(torch.unique(unique.flatten(1), dim=0)) == 8
    assert torch.equal(unique, _data()[dm.train_indices])
    assert dm.train_copies.tolist() == [3, 3, 1, 1, 1, 1, 1, 1]
    # Each of the first two appears exactly three times in what the loader serves.
    for image, copies in zip(unique, dm.train_copies, strict=True):
        assert (dm.train_data == image).flatten(1).all(1).sum().item() == copies
    assert dm.train_labels is None and dm.val_labels is None and dm.num_classes is None


def test_val_split_is_disjoint_from_training():
    dm = _module(val_fraction=0.25)
    assert not torch.isin(dm.val_indices, dm.train_indices).any()
    assert len(dm.val_indices) + len(dm.train_indices) == 40
    train_rows = {tuple(r.tolist()) for r in dm.train_data.flatten(1)}
    assert not any(tuple(r.tolist()) in train_rows for r in dm.val_data.flatten(1))


def test_subset_is_reproducible_with_a_seed_and_differs_for_another():
    first, again, other = _module(num_train=8), _module(num_train=8), _module(num_train=8, seed=1)
    assert torch.equal(first.train_indices, again.train_indices)
    assert torch.equal(first.val_indices, again.val_indices)
    assert not torch.equal(first.train_indices, other.train_indices)


def test_labels_follow_the_images_and_batches_are_x_y_tuples():
    labels = np.arange(40) % 5
    dm = ArrayDataModule(_data(), labels, num_train=6, duplicate=2, duplicate_indices=[5], batch_size=4)
    dm.setup()
    assert dm.num_classes == 5
    assert dm.train_labels.dtype == torch.long
    assert torch.equal(dm.train_labels, torch.as_tensor(labels)[dm.train_indices].repeat_interleave(dm.train_copies))
    assert torch.equal(dm.val_labels, torch.as_tensor(labels)[dm.val_indices])
    x, y = batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, tuple)
    assert x.shape == (4, 1, 2, 2) and x.dtype == torch.float32 and y.dtype == torch.long
    # Every (x, y) pair served is a real pair of the data set.
    assert torch.equal(torch.as_tensor(labels)[(x[:, 0, 0, 0] / 4).long()], y)


def test_batches_without_labels_carry_minus_one():
    _, y = next(iter(_module(batch_size=5).val_dataloader()))
    assert y.tolist() == [-1] * 4


def test_samples_per_epoch_default_is_at_least_one_full_batch():
    loader = _module(num_train=6, batch_size=16).train_dataloader()
    assert isinstance(loader.sampler, ReplacementSampler)
    assert len(loader.sampler) == 16 and len(loader) == 1
    assert [len(x) for x, _ in loader] == [16]
    loader = _module(batch_size=4).train_dataloader()  # 36 training images
    assert len(loader.sampler) == 36 and [len(x) for x, _ in loader] == [4] * 9
    loader = _module(batch_size=4, samples_per_epoch=10).train_dataloader()
    assert [len(x) for x, _ in loader] == [4, 4, 2]  # drop_last=False


def test_training_order_is_fixed_by_the_seed_and_changes_between_epochs():
    def epochs(seed):
        loader = _module(num_train=10, batch_size=8, seed=seed).train_dataloader()
        return [torch.cat([x for x, _ in loader]) for _ in range(2)]

    first, again, other = epochs(0), epochs(0), epochs(1)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], first[1])
    assert not torch.equal(first[0], other[0])


def test_loader_draws_with_replacement_uniformly():
    dm = _module(num_train=4, duplicate=2, duplicate_indices=[0], batch_size=5, samples_per_epoch=5000)
    x = torch.cat([x for x, _ in dm.train_dataloader()])
    counts = torch.stack([(x == img).flatten(1).all(1).sum() for img in dm.unique_train_data()])
    assert counts.sum() == 5000
    # The duplicated image is drawn twice as often (2/5 against 1/5).
    assert counts[0] / 5000 == pytest.approx(0.4, abs=0.03)
    assert (counts[1:] / 5000 - 0.2).abs().max() < 0.03


def test_setup_is_idempotent_and_loaders_need_setup():
    dm = ArrayDataModule(_data())
    with pytest.raises(RuntimeError, match="setup"):
        dm.train_dataloader()
    dm.setup("fit")
    train = dm.train_data
    dm.setup("validate")
    assert dm.train_data is train


def test_zero_val_fraction_gives_an_empty_validation_set():
    dm = _module(val_fraction=0.0)
    assert dm.val_data.shape == (0, 1, 2, 2) and len(dm.train_data) == 40
    assert list(dm.val_dataloader()) == []


class _Recorder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.train_batches, self.val_batches = [], []

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.train_batches.append((x.shape, y.shape))
        return self.layer(x.flatten(1)).square().mean()

    def validation_step(self, batch, batch_idx):
        x, _ = batch
        self.val_batches.append(x.shape)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_runs_in_a_lightning_trainer():
    dm = ArrayDataModule(_data(), num_train=6, batch_size=16, val_fraction=0.2)
    model = _Recorder()
    trainer = L.Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 3  # one full batch of 16 per epoch from 6 images
    assert model.train_batches == [((16, 1, 2, 2), (16,))] * 3
    assert model.val_batches == [(8, 1, 2, 2)] * 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, r"batch_size must be an int >= 1, got 0"),
        ({"num_train": 0}, r"num_train must be an int >= 1"),
        ({"num_train": 37}, r"num_train=37 is larger than the 36 images available"),
        ({"duplicate": 0}, r"duplicate must be an int >= 1"),
        ({"duplicate": 3}, r"duplicate=3 has no effect with duplicate_indices=0"),
        ({"duplicate": 2, "duplicate_indices": -1}, r"duplicate_indices must be an int >= 0"),
        ({"duplicate": 2, "duplicate_indices": [1, 1]}, r"must not repeat a position"),
        ({"duplicate": 2, "duplicate_indices": [0, -2]}, r"every entry of duplicate_indices"),
        ({"val_fraction": 1.0}, r"val_fraction must be a float in \[0, 1\), got 1.0"),
        ({"val_fraction": -0.1}, r"val_fraction must be a float in \[0, 1\)"),
        ({"val_fraction": "0.1"}, r"val_fraction must be a float in \[0, 1\), got '0.1'"),
        ({"duplicate": 2, "duplicate_indices": None}, r"duplicate_indices must be an int or a list of ints"),
        ({"samples_per_epoch": 0}, r"samples_per_epoch must be an int >= 1"),
        ({"seed": -1}, r"seed must be an int >= 0"),
        ({"num_workers": -1}, r"num_workers must be an int >= 0"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ArrayDataModule(_data(), **kwargs)


def test_bad_data_and_labels_fail_at_construction():
    with pytest.raises(ValueError, match="ArrayDataModule needs data="):
        ArrayDataModule()
    with pytest.raises(ValueError, match=r"non-empty \[num_items, \*shape\]"):
        ArrayDataModule(torch.zeros(5))
    with pytest.raises(ValueError, match="labels must be 40 integers"):
        ArrayDataModule(_data(), labels=torch.zeros(39, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must be >= 0"):
        ArrayDataModule(_data(), labels=-torch.ones(40, dtype=torch.long))


class _Loaded(ArrayDataModule):
    def load(self):
        return _data(), None


def test_a_subclass_loads_its_own_data_and_knows_its_shape_after_setup():
    dm = _Loaded(num_train=5)
    with pytest.raises(RuntimeError, match="data_shape is known only after setup"):
        _ = dm.data_shape
    dm.setup()
    assert dm.data_shape == (1, 2, 2) and len(dm.unique_train_data()) == 5
    with pytest.raises(ValueError, match="_Loaded loads its own data; pass data= only to ArrayDataModule"):
        _Loaded(data=_data())


def test_duplicate_positions_beyond_the_subset_fail_at_setup():
    dm = ArrayDataModule(_data(), num_train=4, duplicate=2, duplicate_indices=[4])
    with pytest.raises(ValueError, match="holds position 4 but there are only 4 training images"):
        dm.setup()
