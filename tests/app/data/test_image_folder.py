import numpy as np
import pytest
import torch
from PIL import Image

from memcallback.app.data import ImageFolderDataModule


def _write(path, value, size=(12, 10), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(np.full(shape, value, dtype=np.uint8)).save(path)


def test_loads_resizes_and_scales(tmp_path):
    for i, value in enumerate([0, 255, 51, 102, 153]):
        _write(tmp_path / f"img{i}.png", value)
    _write(tmp_path / "nested" / "deep.jpg", 0, size=(40, 40))
    (tmp_path / "notes.txt").write_text("not an image")
    dm = ImageFolderDataModule(tmp_path, image_size=8, channels=3, val_fraction=0.0)
    assert dm.data_shape == (3, 8, 8)
    dm.setup()
    data = dm.unique_train_data()
    assert data.shape == (6, 3, 8, 8) and dm.train_labels is None
    values = sorted(set(data.flatten(1)[:, 0].tolist()))
    assert values == pytest.approx([-1.0, -0.6, -0.2, 0.2, 1.0], abs=1e-6)
    assert data.min() == -1.0 and data.max() == 1.0


def test_grayscale_from_rgb(tmp_path):
    for i in range(3):
        _write(tmp_path / f"{i}.png", 255)
    dm = ImageFolderDataModule(tmp_path, image_size=4, channels=1, val_fraction=0.0)
    dm.setup()
    assert torch.equal(dm.train_data, torch.ones(3, 1, 4, 4))


def test_class_subdirectories_give_labels(tmp_path):
    for name, count in [("cat", 2), ("dog", 3)]:
        for i in range(count):
            _write(tmp_path / name / f"{i}.png", 10 * i, mode="L")
    _write(tmp_path / "loose.png", 0)
    dm = ImageFolderDataModule(tmp_path, image_size=5, channels=1, class_subdirs=True, val_fraction=0.0)
    dm.setup()
    assert dm.class_names == ["cat", "dog"] and dm.num_classes == 2
    assert sorted(dm.train_labels.tolist()) == [0, 0, 1, 1, 1]


def test_missing_and_empty_folders_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist or is not a directory"):
        ImageFolderDataModule(tmp_path / "nowhere")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.md").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"no image files \(.*\.png.*\) found under"):
        ImageFolderDataModule(tmp_path / "empty").setup()
    with pytest.raises(FileNotFoundError, match="found in any subdirectory of"):
        ImageFolderDataModule(tmp_path / "empty", class_subdirs=True).setup()


def test_unreadable_image_names_the_file(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not really a png")
    with pytest.raises(ValueError, match=r"cannot read image file .*broken\.png"):
        ImageFolderDataModule(tmp_path, val_fraction=0.0).setup()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"channels": 2}, r"channels must be 1 \(grayscale\) or 3 \(RGB\), got 2"), ({"image_size": 0}, "image_size")],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ImageFolderDataModule(tmp_path, **kwargs)
