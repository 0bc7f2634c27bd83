import json

import pytest
from lightning.pytorch.loggers import WandbLogger
from tiny_training import make_data, make_module, make_trainer

from memcallback import MemorizationMonitor

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    yield
    import wandb

    wandb.finish()


def test_offline_wandb_run_gets_scalars_and_media(tmp_path, fast_monitor_kwargs, offline_wandb) -> None:
    logger = WandbLogger(save_dir=tmp_path, project="memcallback-test", mode="offline")
    monitor = MemorizationMonitor(**(fast_monitor_kwargs | {"media": "images", "save_plot": True}))
    trainer = make_trainer(tmp_path, [monitor], logger=logger, max_steps=4)
    trainer.fit(make_module(), datamodule=make_data())
    run_dir = next((tmp_path / "wandb").glob("offline-run-*"))
    media = run_dir / "files" / "media"
    grids = sorted(p.name for p in (media / "images" / "memorization").glob("most_memorized_*.png"))
    assert len(grids) == 3  # checks at steps 0, 2 and 4
    tables = list((media / "table" / "memorization").glob("samples_*.table.json"))
    assert len(tables) == 3
    table = json.loads(tables[0].read_text())
    assert len(table["data"]) == fast_monitor_kwargs["probes"].num_samples and "score" in table["columns"]
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("memorization.png")] == ["memorization.png"]
    assert logger.experiment.summary["memorization/safe_step"] == monitor.safe_step == 4  # named in the run summary


def images_in(value: object) -> list[object]:
    """Every ``wandb.Image`` inside a logged value (tables' cells included)."""
    import wandb

    if isinstance(value, wandb.Image):
        return [value]
    if isinstance(value, wandb.Table):
        return [cell for row in value.data for cell in row if isinstance(cell, wandb.Image)]
    if isinstance(value, dict):
        return [image for v in value.values() for image in images_in(v)]
    return []


def test_with_the_default_settings_no_image_reaches_the_logger(tmp_path, fast_monitor_kwargs, offline_wandb,
                                                               monkeypatch) -> None:
    """Privacy by default: every object the W&B run receives is inspected; charts go out, no picture of a probe's
    sample or of a training image does (neither in a grid, a scatter nor a table cell), and nothing is staged."""
    logger = WandbLogger(save_dir=tmp_path, mode="offline")
    logged: list[dict] = []
    run = logger.experiment
    original = run.log
    monkeypatch.setattr(run, "log", lambda data, *args, **kwargs: (logged.append(data), original(data, *args,
                                                                                                **kwargs))[1])
    defaults = {k: v for k, v in fast_monitor_kwargs.items() if k != "media"}
    monitor = MemorizationMonitor(**defaults)
    assert monitor.media == "charts"
    make_trainer(tmp_path, [monitor], logger=logger, max_steps=4).fit(make_module(), datamodule=make_data())
    media = [d for d in logged if "memorization/samples" in d]
    assert len(media) == 3 and all("memorization/mu_histogram" in d and "memorization/spectrum" in d for d in media)
    assert all("image" not in d["memorization/samples"].columns for d in media)
    assert [image for d in logged for image in images_in(d)] == []
    assert not any(key.endswith(("most_memorized", "scatter")) for d in logged for key in d)
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.read_bytes().startswith(PNG_MAGIC)]
    assert written == []


def test_media_failures_never_stop_training(tmp_path, fast_monitor_kwargs, offline_wandb, monkeypatch) -> None:
    logger = WandbLogger(save_dir=tmp_path, mode="offline")
    run = logger.experiment
    original = run.log

    def log(data, *args, **kwargs):  # the W&B run fails on media (scalars still go through)
        if "memorization/samples" in data:
            raise OSError("disk full")
        return original(data, *args, **kwargs)

    monkeypatch.setattr(run, "log", log)
    monitor = MemorizationMonitor(**(fast_monitor_kwargs | {"media": "images"}))
    trainer = make_trainer(tmp_path, [monitor], logger=logger, max_steps=4)
    with pytest.warns(UserWarning, match="media could not be logged"):
        trainer.fit(make_module(), datamodule=make_data())
    assert trainer.global_step == 4 and len(monitor.history) == 3
