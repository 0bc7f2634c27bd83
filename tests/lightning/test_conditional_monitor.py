"""The monitor on a conditional model: the paper's ||H^D s^D|| and Wen's ||s^D|| per class, usable as monitor."""

import math

import lightning.pytorch as pl
import pytest
from tiny_training import make_data, make_module, make_trainer

from memcallback import ConditionalConfig, MemorizationMonitor, StopConfig
from memcallback.app.models import DiffusionModule, ResidualMLP


def conditional_module() -> DiffusionModule:
    pl.seed_everything(0, verbose=False)
    return DiffusionModule(ResidualMLP((1, 8, 8), hidden=32, num_blocks=1, time_embed_dim=16, num_classes=10),
                           num_timesteps=100)


def test_conditional_metrics_are_logged_and_monitorable(tmp_path, fast_monitor_kwargs) -> None:
    monitor = MemorizationMonitor(**fast_monitor_kwargs, conditions=ConditionalConfig([0, 9], num_samples_per_cond=4),
                                  stop=StopConfig(monitor="memorization/cond/hds", threshold=None, min_delta=0.0,
                                                    stop_training=False))
    trainer = make_trainer(tmp_path, [monitor], max_steps=4)
    trainer.fit(conditional_module(), datamodule=make_data())
    assert [h["step"] for h in monitor.history] == [0, 2, 4] and monitor.failures == 0
    for row in monitor.history:
        for key in ("cond/hds", "cond/sd_norm", "cond/cond0/hds", "cond/cond1/sd_norm", "cond/sharpest_condition"):
            assert math.isfinite(row[key]), key
        assert row["cond/hds"] == pytest.approx((row["cond/cond0/hds"] + row["cond/cond1/hds"]) / 2)
    assert "memorization/cond/hds" in trainer.callback_metrics


def test_conditions_need_a_conditional_model(tmp_path, fast_monitor_kwargs) -> None:
    monitor = MemorizationMonitor(**fast_monitor_kwargs, conditions=ConditionalConfig([0]))
    with pytest.raises(ValueError, match=r"conditions=.*needs a conditional model"):
        make_trainer(tmp_path, [monitor], max_steps=1).fit(make_module(), datamodule=make_data())
