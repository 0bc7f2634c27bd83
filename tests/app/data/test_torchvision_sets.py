import sys
import types

import numpy as np
import pytest
import torch

from memcallback.app.data import TorchvisionDataModule


@pytest.fixture
def no_torchvision(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # makes `import torchvision` fail


@pytest.fixture
def fake_torchvision(monkeypatch):
    """A stand-in exposing the two attributes the module reads (torchvision is not a dependency)."""
    calls = []

    class _Fake:
        def __init__(self, root, train, download):
            calls.append((type(self).__name__, root, train, download))
            n = 30
            if type(self).__name__ == "MNIST":
                self.data = torch.arange(n * 28 * 28).reshape(n, 28, 28).remainder(256).to(torch.uint8)
                self.targets = torch.arange(n) % 10
            else:
                self.data = np.full((n, 32, 32, 3), 255, dtype=np.uint8)
                self.targets = [i % 10 for i in range(n)]

    module = types.ModuleType("torchvision")
    module.datasets = types.SimpleNamespace(MNIST=type("MNIST", (_Fake,), {}), CIFAR10=type("CIFAR10", (_Fake,), {}))
    monkeypatch.setitem(sys.modules, "torchvision", module)
    return calls


def test_missing_torchvision_says_what_to_install(no_torchvision):
    with pytest.raises(ImportError, match=r"needs torchvision.*pip install torchvision"):
        TorchvisionDataModule("mnist")


def test_missing_files_say_where_they_were_looked_for(fake_torchvision, tmp_path):
    dm = TorchvisionDataModule("cifar10", root=tmp_path)
    assert dm.data_shape == (3, 32, 32)
    dm.prepare_data()  # download=False: nothing happens
    with pytest.raises(FileNotFoundError, match=r"CIFAR10 not found under root=.*cifar-10-batches-py.*download=True"):
        dm.setup()
    assert fake_torchvision == []


def test_loads_mnist_from_disk_without_downloading(fake_torchvision, tmp_path):
    marker = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    marker.parent.mkdir(parents=True)
    marker.touch()
    dm = TorchvisionDataModule("mnist", root=tmp_path, num_train=10)
    dm.setup()
    assert fake_torchvision == [("MNIST", tmp_path, True, False)]
    assert dm.unique_train_data().shape == (10, 1, 28, 28) and dm.num_classes == 10
    everything = torch.cat([dm.train_data, dm.val_data])
    assert everything.min() == -1.0 and everything.max() == 1.0
    assert torch.equal(dm.train_labels, dm.train_indices % 10)


def test_download_only_when_asked(fake_torchvision, tmp_path):
    dm = TorchvisionDataModule("cifar10", root=tmp_path, download=True, val_fraction=0.0)
    dm.prepare_data()
    dm.setup()
    assert fake_torchvision == [("CIFAR10", tmp_path, True, True), ("CIFAR10", tmp_path, True, True)]
    assert dm.train_data.shape == (30, 3, 32, 32) and (dm.train_data == 1.0).all()


def test_unknown_name(fake_torchvision):
    with pytest.raises(ValueError, match=r"name must be one of \['cifar10', 'mnist'\], got 'svhn'"):
        TorchvisionDataModule("svhn")
