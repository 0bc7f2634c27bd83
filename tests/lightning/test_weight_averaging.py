"""Lightning's EMAWeightAveraging beside the monitor: the check measures the average (which the averaging callback
swaps in only for validation), the safe weights keep both copies, and after a stop ``fit`` ends with the safe
average (the callback copies the average into the model at the end of training)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from tiny_training import ScriptedMonitor, make_data, make_module, make_trainer

from memcallback import MemorizationMonitor, StopConfig

STOP = StopConfig(monitor="memorization/score", threshold=0.3, min_delta=0.05, patience=2, restore_safe_weights=True)


def averaged_after(tmp_path, steps: int) -> dict[str, torch.Tensor]:
    """The weights ``fit`` ends with after ``steps`` unwatched steps with EMAWeightAveraging: the average."""
    module = make_module()
    make_trainer(tmp_path / f"reference{steps}", [EMAWeightAveraging(decay=0.5)], max_steps=steps).fit(
        module, datamodule=make_data())
    return {k: v.clone() for k, v in module.state_dict().items()}


def rows(history: list[dict[str, float]]) -> list[dict[str, float | None]]:
    timing = ("seconds", "overhead", "epoch", "step")
    return [{k: None if math.isnan(v) else v for k, v in row.items() if k not in timing} for row in history]


def test_after_a_stop_fit_ends_with_the_safe_average(tmp_path, fast_monitor_kwargs) -> None:
    monitor = ScriptedMonitor([0.0, 0.1, 0.5, 0.6], **fast_monitor_kwargs, stop=STOP)
    module = make_module()
    trainer = make_trainer(tmp_path, [EMAWeightAveraging(decay=0.5), monitor], max_steps=12)
    trainer.fit(module, datamodule=make_data())
    assert (monitor.stopped_step, monitor.safe_step, trainer.global_step) == (6, 2, 6)
    safe = averaged_after(tmp_path, 2)
    assert [k for k, v in module.state_dict().items() if not torch.equal(v, safe[k])] == []


def test_the_check_measures_the_average(tmp_path, fast_monitor_kwargs) -> None:
    quiet = StopConfig(monitor="memorization/score", threshold=10.0)
    measured = {}
    for weights in ("ema", "raw"):
        monitor = MemorizationMonitor(**fast_monitor_kwargs, stop=quiet, weights=weights)
        make_trainer(tmp_path / weights, [EMAWeightAveraging(decay=0.5), monitor], max_steps=2).fit(
            make_module(), datamodule=make_data())
        measured[weights] = rows(monitor.history)[-1]  # the check at step 2
    average = make_module()
    average.load_state_dict(averaged_after(tmp_path, 2))
    alone = MemorizationMonitor(**fast_monitor_kwargs, stop=quiet)  # a check of the average itself
    make_trainer(tmp_path / "validate", [alone], limit_val_batches=1).validate(average, datamodule=make_data())
    assert measured["ema"] == rows(alone.history)[-1]
    assert measured["raw"] != measured["ema"]


def test_a_monitor_before_the_averaging_callback_is_refused(tmp_path, fast_monitor_kwargs) -> None:
    trainer = make_trainer(tmp_path, [MemorizationMonitor(**fast_monitor_kwargs), EMAWeightAveraging()])
    with pytest.raises(ValueError, match="put it after the averaging callback"):
        trainer.fit(make_module(), datamodule=make_data())


def test_after_a_resume_the_safe_checkpoint_restores_both_copies(tmp_path, fast_monitor_kwargs) -> None:
    """Killed after step 4 (safe step 2, one alarm), resumed: the stop at 6 has no host copy, so it reads safe.ckpt,
    which WeightAveraging wrote with the average as state_dict and the trained weights as current_model_state."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    first = ScriptedMonitor([0.0, 0.1, 0.5], **fast_monitor_kwargs, stop=STOP)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1)
    make_trainer(tmp_path, [EMAWeightAveraging(decay=0.5), first, ckpt], max_steps=4, enable_checkpointing=True).fit(
        make_module(), datamodule=make_data())
    assert (first.safe_step, first.rule.wait_count) == (2, 1)
    resumed = ScriptedMonitor([0.6], **fast_monitor_kwargs, stop=STOP)
    module = make_module()
    trainer = make_trainer(tmp_path, [EMAWeightAveraging(decay=0.5), resumed,
                                      ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2)],
                           max_steps=12, enable_checkpointing=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, datamodule=make_data(), ckpt_path=str(tmp_path / "ckpt" / "epoch=0-step=4.ckpt"))
    assert [str(w.message) for w in caught if "restore" in str(w.message)] == []
    assert (resumed.stopped_step, trainer.global_step) == (6, 6)
    assert resumed.watch.safe_weights.state is None  # restored from safe.ckpt, not from a host copy
    safe = averaged_after(tmp_path, 2)
    assert [k for k, v in module.state_dict().items() if not torch.equal(v, safe[k])] == []
