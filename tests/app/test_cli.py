"""The audit CLI (`memcallback rate|analyze CHECKPOINT`) on a checkpoint made by the training app."""

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from test_app import TINY, make_cfg

from memcallback.app.cli import main
from memcallback.app.train import run


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    cfg = make_cfg(["logger=none", "~callbacks.memorization", *TINY])
    summary = run(cfg, output_dir=out)
    (out / ".hydra").mkdir()
    OmegaConf.save(cfg, out / ".hydra" / "config.yaml")  # what train.py's @hydra.main saves beside the run
    return Path(summary["checkpoint"])


def test_rate(checkpoint, capsys) -> None:
    assert main(["rate", str(checkpoint), "--samples", "8", "--steps", "5"]) == 0
    out = capsys.readouterr().out
    assert "memorization rate:" in out and "of 8 DDIM-5 samples" in out and "16 training images" in out


def test_analyze_writes_a_json_summary_and_a_png(checkpoint, tmp_path, capsys) -> None:
    report, png = tmp_path / "report.json", tmp_path / "figures" / "report.png"
    assert main(["analyze", str(checkpoint), "--samples", "8", "--steps", "5", "--sigmas", "0.2",
                 "--json", str(report), "--png", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads(report.read_text())
    assert 0.0 <= summary["score"] <= 1.0 and 0.0 <= summary["nn_rate"] <= 1.0
    assert "effective_dim" in capsys.readouterr().out


def test_clear_errors(tmp_path) -> None:
    with pytest.raises(SystemExit, match="does not exist"):
        main(["rate", str(tmp_path / "missing.ckpt"), "--config", str(tmp_path / "c.yaml")])
    lonely = tmp_path / "lonely.ckpt"
    lonely.write_bytes(b"")
    with pytest.raises(SystemExit, match="no Hydra config"):
        main(["rate", str(lonely)])


def test_safe_names_the_checkpoint_of_the_last_safe_check(tmp_path, capsys) -> None:
    """Every check after the baseline alarms (the effective dimension falls at every check of early training,
    mode=min, no threshold) and patience 3 is not reached by step 4: the baseline (step 0) is the last safe check,
    its weights are in safe.ckpt beside the regular checkpoints of steps 2 and 4."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from tiny_training import make_data, make_module, make_trainer

    from memcallback import MemorizationMonitor, ProbeConfig, SharpnessConfig, StopConfig

    stop = StopConfig(monitor="memorization/effective_dim", mode="min", threshold=None, min_delta=0.0, patience=3)
    monitor = MemorizationMonitor(every_n_train_steps=2, probes=ProbeConfig(num_samples=8, num_sampling_steps=5),
                                  sharpness=SharpnessConfig(k=4), stop=stop, save_plot=False, media="none")
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "run" / "checkpoints", every_n_train_steps=2, save_top_k=-1)
    trainer = make_trainer(tmp_path, [monitor, checkpoints], max_steps=4, enable_checkpointing=True)
    trainer.fit(make_module(), datamodule=make_data())
    assert monitor.safe_step == 0 and monitor.stopped_step is None
    assert main(["safe", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "last safe check: step 0" in out and "epoch=0-step=4.ckpt, step 4" in out
    assert f"safe weights:    {tmp_path / 'run' / 'checkpoints' / 'safe.ckpt'}" in out
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no checkpoint with MemorizationMonitor state"):
        main(["safe", str(tmp_path / "empty")])
