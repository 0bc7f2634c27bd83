import json
import math

import numpy as np
import pytest
import torch
import wandb

from memcallback.measure.ground_truth import memorization_labels
from memcallback.measure.report import SharpnessReport
from memcallback.measure.sharpness import SharpnessStats
from memcallback.viz.wandb_media import image_grid, log_media, pair_grid, to_uint8, upscale

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class RecordingRun:
    """Stands in for a wandb run: records every ``log`` call and rejects W&B's own ``step=``."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def log(self, data: dict) -> None:
        self.calls.append(data)


def _report(shape: tuple[int, ...], num: int = 6, k: int = 3, train: torch.Tensor | None = None) -> SharpnessReport:
    generator = torch.Generator().manual_seed(0)
    score = torch.linspace(0.05, 0.95, num)
    mu = (1 - score)[:, None] * torch.linspace(1.0, 0.5, k)[None, :]
    stats = SharpnessStats(
        timestep=27, sigma=0.1, eigenvalues=(mu - 1) / 0.01, mu=mu, min_mu=torch.full((num,), math.nan),
        min_mu_residual=torch.full((num,), math.nan), trace_mu=torch.zeros(num), effective_dim=torch.full((num,), 5.0),
        flat_count=torch.full((num,), 2), eps_norm_sq=torch.ones(num), hs_norm=torch.ones(num),
        asymmetry=torch.full((num,), 0.01), converged=torch.ones(num, dtype=torch.bool), ritz_residual=torch.zeros(num),
        memorization_score=score, flagged=score > 0.5,
    )
    samples = torch.rand(num, *shape, generator=generator) * 2 - 1
    if train is not None:
        samples[-1] = train[2]  # an exact copy of a training image
    labels = None if train is None else memorization_labels(samples, train)
    return SharpnessReport(stats={27: stats}, samples=samples, labels=labels)


def _train(shape: tuple[int, ...], n: int = 20) -> torch.Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_to_uint8_maps_the_data_range_and_clips():
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0])
    assert to_uint8(x).tolist() == [0, 0, 128, 255, 255]
    assert to_uint8(x).dtype == torch.uint8


def test_image_grid_exact_layout_grayscale():
    images = torch.stack([torch.full((1, 2, 3), v) for v in (-1.0, 0.0, 1.0)])  # 3 tiles of 2x3: 0, 128, 255
    grid = image_grid(images, nrow=2, pad=1, pad_value=-1.0)
    assert grid.dtype == np.uint8
    assert grid.shape == (2 * 3 + 1, 2 * 4 + 1)
    expected = np.zeros((7, 9), dtype=np.uint8)
    expected[1:3, 1:4] = 0
    expected[1:3, 5:8] = 128
    expected[4:6, 1:4] = 255
    np.testing.assert_array_equal(grid, expected)


def test_image_grid_rgb_channels_last_and_default_white_padding():
    images = torch.zeros(2, 3, 2, 2)
    images[0, 0] = 1.0  # red tile
    images[1, 2] = 1.0  # blue tile
    images[images == 0] = -1.0
    grid = image_grid(images, nrow=2, pad=1)
    assert grid.shape == (4, 7, 3)
    assert grid[0].tolist() == [[255, 255, 255]] * 7  # padding row
    assert grid[1, 1].tolist() == [255, 0, 0]
    assert grid[2, 5].tolist() == [0, 0, 255]
    assert grid[1, 3].tolist() == [255, 255, 255]  # padding column between tiles


def test_image_grid_without_padding_is_a_plain_tiling():
    images = torch.arange(4.0).reshape(4, 1, 1, 1) / 3 * 2 - 1
    np.testing.assert_array_equal(image_grid(images, nrow=2, pad=0), to_uint8(images).reshape(2, 2).numpy())


@pytest.mark.parametrize("shape", [(4, 2, 2), (2, 8), (0, 1, 2, 2)])
def test_image_grid_rejects_non_image_batches(shape):
    with pytest.raises(ValueError, match="C in"):
        image_grid(torch.zeros(shape), nrow=2)


def test_pair_grid_puts_each_partner_below_its_sample_and_separates_pairs_of_rows():
    samples = torch.full((3, 1, 1, 1), -1.0)
    partners = torch.full((3, 1, 1, 1), 0.0)
    grid = pair_grid(samples, partners, ncol=2, pad=0, gap=1)
    assert grid.tolist() == [[0, 0], [128, 128], [255, 255], [0, 255], [128, 255]]
    assert pair_grid(samples, None, ncol=2, pad=0).tolist() == [[0, 0], [0, 255]]


def test_upscale_reaches_the_minimum_size_by_pixel_repetition():
    images = torch.arange(4.0).reshape(1, 1, 2, 2)
    big = upscale(images, min_size=5)
    assert big.shape == (1, 1, 6, 6)
    assert torch.equal(big[0, 0, ::3, ::3], images[0, 0])


def test_log_media_without_images_sends_charts_and_numbers_only():
    """The default (``images=False``): nothing that shows a sample or a training image, on image and on 2-D data."""
    for shape in ((1, 8, 8), (2,)):
        train = _train(shape, n=50)
        run = RecordingRun()
        log_media(run, _report(shape, k=2, train=train), train, step=1)
        data = run.calls[0]
        assert set(data) == {"trainer/global_step", "memorization/mu_histogram", "memorization/spectrum",
                             "memorization/samples"}
        table = data["memorization/samples"]
        assert "image" not in table.columns and {"nn_ratio", "copied", "score"} <= set(table.columns)
        assert not any(isinstance(cell, wandb.Image) for row in table.data for cell in row)


def test_log_media_image_data_logs_one_call_with_every_key():
    train = _train((1, 8, 8))
    report = _report((1, 8, 8), train=train)
    run = RecordingRun()
    log_media(run, report, train, step=123, prefix="mem/", num_images=4, images=True)
    assert len(run.calls) == 1
    data = run.calls[0]
    assert set(data) == {"trainer/global_step", "mem/mu_histogram", "mem/spectrum", "mem/most_memorized", "mem/samples"}
    assert data["trainer/global_step"] == 123
    assert isinstance(data["mem/mu_histogram"], wandb.Histogram)
    assert sum(data["mem/mu_histogram"].histogram) == report.primary.mu.numel()
    assert isinstance(data["mem/most_memorized"], wandb.Image)
    caption = data["mem/most_memorized"]._caption
    assert "nearest training image" in caption and "0.950" in caption
    # 4 samples in one row above their 4 neighbours, tiles upscaled 8 -> 32 px, 1 px padding.
    assert data["mem/most_memorized"].image.size == (4 * 33 + 1, 2 * 33 + 1)

    table = data["mem/samples"]
    assert isinstance(table, wandb.Table)
    for column in ("index", "score", "flagged", "mu_max", "effective_dim", "min_mu", "asymmetry",
                   "nn_ratio", "copied", "image"):
        assert column in table.columns
    assert len(table.data) == 6
    row = dict(zip(table.columns, table.data[-1], strict=True))
    assert row["index"] == 5 and row["flagged"] is True and row["copied"] is True
    assert row["score"] == pytest.approx(0.95)
    assert isinstance(row["image"], wandb.Image)

    chart = data["mem/spectrum"]
    assert "t=27" in chart.spec.string_fields["title"] and "sigma=0.1" in chart.spec.string_fields["title"]
    assert set(chart.table.get_column("lineKey")) == {"flagged", "not flagged"}
    flagged_mean = report.primary.mu[report.primary.flagged].mean(dim=0).tolist()
    rows = [row for row in chart.table.data if row[1] == "flagged"]
    assert [row[2] for row in rows] == pytest.approx(flagged_mean)


def test_log_media_most_memorized_grid_is_ordered_by_score_and_shows_the_nearest_training_image():
    train = _train((1, 8, 8))
    report = _report((1, 8, 8), train=train)
    run = RecordingRun()
    log_media(run, report, train, step=0, num_images=1, images=True)
    grid = np.asarray(run.calls[0]["memorization/most_memorized"].image)
    expected = pair_grid(upscale(report.samples[-1:]), upscale(train[2:3]))
    np.testing.assert_array_equal(grid, expected)


def test_log_media_grid_wraps_after_eight_samples_into_separated_blocks():
    train = _train((1, 8, 8))
    report = _report((1, 8, 8), num=12, train=train)
    run = RecordingRun()
    log_media(run, report, train, step=0, num_images=10, images=True)
    assert run.calls[0]["memorization/most_memorized"].image.size == (8 * 33 + 1, 2 * (2 * 33 + 1) + 4)


def test_log_media_without_training_data_has_no_neighbours():
    report = _report((3, 8, 8))
    run = RecordingRun()
    log_media(run, report, None, step=7, images=True)
    data = run.calls[0]
    image = data["memorization/most_memorized"]
    assert image.image.size == (6 * 33 + 1, 33 + 1)  # one row of the 6 samples, RGB
    assert image.image.mode == "RGB"
    assert "nearest" not in image._caption
    assert "nn_ratio" not in data["memorization/samples"].columns


def test_log_media_two_dimensional_data_logs_a_scatter_instead_of_a_grid():
    train = _train((2,), n=50)
    report = _report((2,), k=2, train=train)
    report.primary.flagged[:] = False  # only one series in the spectrum
    run = RecordingRun()
    log_media(run, report, train, step=3, images=True)
    data = run.calls[0]
    assert "memorization/most_memorized" not in data
    scatter = data["memorization/scatter"]
    assert isinstance(scatter, wandb.Image)
    assert scatter.image.mode == "RGB" and min(scatter.image.size) >= 300
    assert "image" not in data["memorization/samples"].columns
    assert set(data["memorization/spectrum"].table.get_column("lineKey")) == {"not flagged"}


def test_log_media_into_a_real_offline_run_writes_media_files(tmp_path, monkeypatch):
    for name, value in {"WANDB_SILENT": "true", "WANDB_MODE": "offline", "WANDB_ERROR_REPORTING": "false",
                        "WANDB_DISABLE_GIT": "true", "WANDB_DISABLE_CODE": "true",
                        "WANDB_DATA_DIR": str(tmp_path / "data")}.items():
        monkeypatch.setenv(name, value)
    train = _train((1, 8, 8))
    report = _report((1, 8, 8), train=train)
    run = wandb.init(mode="offline", dir=tmp_path, project="memcallback-test",
                     settings=wandb.Settings(x_disable_stats=True, init_timeout=30))
    try:
        log_media(run, report, train, step=5, images=True)
    finally:
        run.finish()
    media = tmp_path / "wandb" / "latest-run" / "files" / "media"
    grids = list((media / "images" / "memorization").glob("most_memorized_*.png"))
    assert len(grids) == 1 and grids[0].read_bytes().startswith(PNG_MAGIC)
    tables = {p.name.split("_")[0]: p for p in (media / "table" / "memorization").glob("*.table.json")}
    assert set(tables) == {"samples", "spectrum"}
    content = json.loads(tables["samples"].read_text())
    assert len(content["data"]) == 6 and {"score", "nn_ratio", "image"} <= set(content["columns"])
    # W&B stores a table's images with the table's run_table artifact, staged under WANDB_DATA_DIR.
    staged = [p for p in (tmp_path / "data").rglob("*") if p.is_file() and p.read_bytes().startswith(PNG_MAGIC)]
    assert len(staged) == 6
