import json

import pytest
from lightning.pytorch.loggers import WandbLogger
from tiny_training import make_data, make_module, make_trainer

from memcallback.lightning.callback import MemorizationMonitor


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
    monitor = MemorizationMonitor(**(fast_monitor_kwargs | {"log_media": True, "save_plot": True}))
    trainer = make_trainer(tmp_path, [monitor], logger=logger, max_steps=4)
    trainer.fit(make_module(), datamodule=make_data())
    run_dir = next((tmp_path / "wandb").glob("offline-run-*"))
    media = run_dir / "files" / "media"
    grids = sorted(p.name for p in (media / "images" / "memorization").glob("most_memorized_*.png"))
    assert len(grids) == 3  # checks at steps 0, 2 and 4
    tables = list((media / "table" / "memorization").glob("samples_*.table.json"))
    assert len(tables) == 3
    table = json.loads(tables[0].read_text())
    assert len(table["data"]) == fast_monitor_kwargs["num_samples"] and "score" in table["columns"]
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("memorization.png")] == ["memorization.png"]


def test_media_failures_never_stop_training(tmp_path, fast_monitor_kwargs, offline_wandb, monkeypatch) -> None:
    import memcallback.viz.wandb_media

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(memcallback.viz.wandb_media, "log_media", broken)
    logger = WandbLogger(save_dir=tmp_path, mode="offline")
    monitor = MemorizationMonitor(**(fast_monitor_kwargs | {"log_media": True}))
    trainer = make_trainer(tmp_path, [monitor], logger=logger, max_steps=4)
    with pytest.warns(UserWarning, match="media could not be logged"):
        trainer.fit(make_module(), datamodule=make_data())
    assert trainer.global_step == 4 and len(monitor.history) == 3
