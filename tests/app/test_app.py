"""The training app end to end: run(cfg) through the compose API, the train.py wrapper, clear errors."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException

from memcallback.app.models import DiffusionModule
from memcallback.app.train import run

ROOT = Path(__file__).parents[2]
# Tiny runs: one 3-step epoch (so validation and checkpointing happen), 8 evaluation samples.
TINY = ["trainer.max_steps=3", "data.samples_per_epoch=48", "data.batch_size=16", "eval_samples=8", "eval_steps=5"]


def make_cfg(overrides):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        return compose("train", overrides=list(overrides))


@pytest.fixture(autouse=True)
def _quiet_offline_wandb(tmp_path, monkeypatch):
    """Offline, silent W&B writing under tmp_path (tests/conftest.py already runs torch on one thread)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))


DATA_SHAPES = {"digits": (1, 8, 8), "toy": (2,), "patches": (3, 16, 16)}
# The UNet experiment at a quarter of its width, without the callback's check (test_default_run_logs_to_offline_wandb
# runs the callback on a UNet).
SHRINK = {"patches_memorize": ["model.network.base_channels=8", "~callbacks.memorization"]}


@pytest.mark.parametrize("experiment", ["digits_memorize", "digits_generalize", "toy_memorize", "patches_memorize"])
def test_each_experiment_runs(tmp_path, experiment):
    overrides = [f"experiment={experiment}", "logger=csv", *TINY, *SHRINK.get(experiment, [])]
    summary = run(make_cfg(overrides), output_dir=tmp_path / "run")
    assert summary["global_step"] == 3 and summary["output_dir"] == str(tmp_path / "run")
    assert 0.0 <= summary["memorization_rate"] <= 1.0
    assert summary["metrics"]["val/loss"] > 0 and summary["wandb_dir"] is None
    assert Path(summary["checkpoint"]).is_file() and Path(summary["best_checkpoint"]).is_file()
    assert list((tmp_path / "run" / "csv").rglob("metrics.csv"))
    model = DiffusionModule.load_from_checkpoint(summary["checkpoint"])
    assert model.data_shape == DATA_SHAPES[experiment.split("_")[0]]


def test_resolved_config_is_every_loggers_hyperparameters(tmp_path):
    cfg = make_cfg(["logger=[csv,tensorboard]", *TINY, "~callbacks.memorization"])
    summary = run(cfg, output_dir=tmp_path / "run")
    (hparams_file,) = (tmp_path / "run" / "csv").rglob("hparams.yaml")
    hparams = yaml.safe_load(hparams_file.read_text())
    assert hparams["data"]["num_train"] == 16 and hparams["trainer"]["max_steps"] == 3
    assert hparams["paths"]["output_dir"] == summary["output_dir"]  # interpolations resolved
    assert hparams["callbacks"]["model_checkpoint"]["dirpath"] == str(tmp_path / "run" / "checkpoints")
    assert list((tmp_path / "run" / "tensorboard").rglob("events.out.tfevents.*"))
    assert summary["monitor"] is None and summary["monitor_value"] is None  # no memorization callback


def test_summary_returns_the_monitored_value(tmp_path):
    """What train.py hands to Hydra's sweepers: the memorization callback's monitored value at the end."""
    summary = run(make_cfg(["logger=none", *TINY]), output_dir=tmp_path)
    assert summary["monitor"] == "memorization/loss_gap"  # the default with held-out data (the digits have them)
    assert isinstance(summary["monitor_value"], float)
    assert summary["monitor_value"] == summary["metrics"]["memorization/loss_gap"]


def test_default_run_logs_to_offline_wandb(tmp_path):
    summary = run(make_cfg([*TINY, "model=unet", "model.network.base_channels=8"]), output_dir=tmp_path / "run")
    wandb_dir = Path(summary["wandb_dir"])
    assert wandb_dir.parent == tmp_path / "run" / "wandb" and wandb_dir.name.startswith("offline-run-")
    assert list(wandb_dir.glob("run-*.wandb"))


def test_conditional_model_trains_on_labels(tmp_path):
    summary = run(make_cfg([*TINY, "logger=none", "callbacks=none", "model.network.num_classes=10"]),
                  output_dir=tmp_path)
    assert summary["metrics"]["train/loss"] > 0


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("trainer.max_steps=-1", "trainer.max_steps"),
        ("eval_samples=-4", "eval_samples"),
        ("copy_ratio=2", "copy_ratio"),
        ("torch_threads=0", "torch_threads"),
    ],
)
def test_bad_values_fail_before_training(tmp_path, override, match):
    with pytest.raises(ValueError, match=match):
        run(make_cfg([override]), output_dir=tmp_path)


def test_bad_constructor_arguments_name_the_argument(tmp_path):
    with pytest.raises(InstantiationException, match="num_train"):
        run(make_cfg(["data.num_train=0", "logger=none"]), output_dir=tmp_path)
    with pytest.raises(InstantiationException, match="prediction_type"):
        run(make_cfg(["model.prediction_type=noise", "logger=none"]), output_dir=tmp_path)


def test_train_py_is_a_hydra_app(tmp_path):
    """The thin @hydra.main wrapper: command-line overrides, Hydra's run dir, the printed summary."""
    run_dir = tmp_path / "hydra_run"
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "logger=csv", *TINY, f"hydra.run.dir={run_dir}"],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "memorized" in result.stdout and str(run_dir) in result.stdout
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / ".hydra" / "config.yaml").is_file()
    bad = subprocess.run([sys.executable, str(ROOT / "train.py"), "trainer.max_stepz=3"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert bad.returncode != 0 and "Could not override 'trainer.max_stepz'" in bad.stderr


def test_latest_checkpoint_is_the_final_step(tmp_path):
    """last.ckpt follows training even when the held-out loss (the best checkpoint's monitor) gets worse."""
    overrides = [o for o in TINY if not o.startswith("trainer.max_steps")]
    summary = run(make_cfg(["logger=none", "~callbacks.memorization", "trainer.max_steps=9", *overrides]),
                  output_dir=tmp_path)
    assert Path(summary["checkpoint"]).name == "last.ckpt"
    assert torch.load(summary["checkpoint"], weights_only=True, map_location="cpu")["global_step"] == 9
    assert Path(summary["best_checkpoint"]).name.startswith("step")
