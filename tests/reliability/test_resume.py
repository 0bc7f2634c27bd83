"""Issue 6, item 3: a run killed half-way through the stop rule's patience resumes where it was.

End to end: ``train.py`` is SIGKILLed (no cleanup) after the second of three rising checks, right after
``last.ckpt`` was written; the app resumed with ``ckpt_path`` continues with the same best value, wait count,
history and probe set, and stops at the same step as a run that was never interrupted. A unit-level twin
with a scripted series checks the same through the Trainer alone.
"""

from __future__ import annotations

import signal

import pytest
import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import ModelCheckpoint
from reliability_helpers import (
    ROOT,
    TINY_APP,
    assert_same_values,
    forced_stop,
    read_reports,
    report_overrides,
    train_py,
)
from tiny_training import ScriptedMonitor, make_data, make_module, make_trainer

from memcallback import GovernorConfig, MemorizationMonitor, StopConfig
from memcallback.app.train import run

# patience 3: the rule alarms at steps 2, 4 and 6 and fires at 6; the process dies after step 4 (wait count 2)
RUN = ["logger=none", "~callbacks.model_checkpoint", "callbacks.last_checkpoint.every_n_train_steps=2",
       "trainer.max_steps=12", *TINY_APP, *forced_stop(patience=3)]
KILL_STEP, STOP_STEP = 4, 6


def run_app(overrides: list[str], output_dir) -> None:
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        cfg = compose("train", overrides=overrides)
    run(cfg, output_dir=output_dir)


@pytest.mark.slow
def test_a_killed_run_resumes_half_way_through_its_patience(tmp_path) -> None:
    killed_dir = tmp_path / "killed"
    proc = train_py([*RUN, *report_overrides(tmp_path / "killed_reports"), f"hydra.run.dir={killed_dir}",
                     "+callbacks.kill._target_=reliability_helpers.KillAt", f"+callbacks.kill.step={KILL_STEP}"],
                    cwd=tmp_path, timeout=240)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    (killed_start,) = read_reports(tmp_path / "killed_reports", "start")
    last = killed_dir / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True, map_location="cpu")
    assert checkpoint["global_step"] == KILL_STEP
    (saved,) = [v for k, v in checkpoint["callbacks"].items() if k.startswith("MemorizationMonitor")]
    assert saved["rule"]["wait_count"] == 2 and not saved["rule"]["stopped"]  # half-way through its patience
    assert [h["step"] for h in saved["history"]] == [0, 2, 4]

    run_app([*RUN, *report_overrides(tmp_path / "resumed_reports"), f"ckpt_path={last}"], tmp_path / "resumed")
    (start,) = read_reports(tmp_path / "resumed_reports", "start")
    assert start["rule"] == saved["rule"]  # same best value, wait count, not stopped
    assert start["global_step"] == KILL_STEP and len(start["history"]) == len(saved["history"])
    for restored, written in zip(start["history"], saved["history"], strict=True):
        assert_same_values(restored, written)
    assert start["probes"] == killed_start["probes"]  # the same probe noises
    (end,) = read_reports(tmp_path / "resumed_reports", "end")
    assert end["stopped_step"] == STOP_STEP and end["global_step"] == STOP_STEP  # the third alarm, across the kill
    assert [h["step"] for h in end["history"]] == [0, 2, 4, 6]

    run_app([*RUN, *report_overrides(tmp_path / "straight_reports")], tmp_path / "straight")
    (straight,) = read_reports(tmp_path / "straight_reports", "end")
    assert straight["stopped_step"] == STOP_STEP and straight["probes"] == killed_start["probes"]
    for before_kill, uninterrupted in zip(end["history"][:3], straight["history"][:3], strict=True):
        assert_same_values(before_kill, uninterrupted)  # the checks restored from the checkpoint are the real ones


def test_resume_continues_with_the_same_state(tmp_path, fast_monitor_kwargs) -> None:
    stop = StopConfig(monitor="memorization/score", threshold=0.3, min_delta=0.05, patience=3)
    kwargs = fast_monitor_kwargs | {"stop": stop}
    first = ScriptedMonitor([0.0, 0.5, 0.6], **kwargs)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1)
    make_trainer(tmp_path, [first, ckpt], max_steps=4, enable_checkpointing=True).fit(make_module(),
                                                                                     datamodule=make_data())
    assert first.rule.wait_count == 2 and first.stopped_step is None  # half-way through its patience
    resumed = ScriptedMonitor([0.7, 0.8], **kwargs)  # the checks after the resume
    trainer = make_trainer(tmp_path, [resumed], max_steps=12)
    trainer.fit(make_module(), datamodule=make_data(), ckpt_path=str(tmp_path / "ckpt" / "epoch=0-step=4.ckpt"))
    assert resumed.rule.best == 0.0
    assert resumed.stopped_step == 6  # the third rising check, counted across the resume
    assert [h["step"] for h in resumed.history] == [0, 2, 4, 6]
    assert resumed.watch.probe_set.digest() == first.watch.probe_set.digest()  # the same probe set
    assert resumed.safe_step == 0  # the last check where the rule did not alarm, carried across the resume


def test_the_cost_governor_resumes_with_its_accounts(tmp_path, fast_monitor_kwargs) -> None:
    """The governor's running sums, measured costs and cut travel in the checkpoint: the resumed callback goes on
    from them (checks far dearer than these tiny training steps: light ones, the loss gap alone, the baseline too)."""
    kwargs = fast_monitor_kwargs | {"stop": StopConfig(monitor="memorization/loss_gap", stop_training=False),
                                    "governor": GovernorConfig()}
    first = MemorizationMonitor(**kwargs)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1)
    make_trainer(tmp_path, [first, ckpt], max_steps=4, enable_checkpointing=True).fit(make_module(),
                                                                                     datamodule=make_data())
    path = tmp_path / "ckpt" / "epoch=0-step=4.ckpt"
    saved = torch.load(path, weights_only=False)["callbacks"][first.state_key]["governor"]
    assert saved == first.watch.governor.state_dict() and saved["train_seconds"] > 0
    assert [h["probes_measured"] for h in first.history] == [0.0, 0.0, 0.0]
    resumed = MemorizationMonitor(**kwargs)
    make_trainer(tmp_path, [resumed], max_steps=6).fit(make_module(), datamodule=make_data(), ckpt_path=str(path))
    governor = resumed.watch.governor
    assert governor.check_seconds > saved["check_seconds"] and governor.train_seconds > saved["train_seconds"]
    assert governor.costs.keys() >= saved["costs"].keys() and governor.ceiling <= saved["ceiling"]  # the ratchet
    assert resumed.history[-1]["probes_measured"] == 0.0 and resumed.history[-1]["step"] == 6.0
