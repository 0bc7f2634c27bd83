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
