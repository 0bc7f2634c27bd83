import csv
import math

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from tiny_training import ScriptedMonitor, make_data, make_module, make_trainer

from memcallback import MemorizationMonitor, ProbeConfig, StopConfig

SCORE = "memorization/score"  # the rules of these tests watch the score, whatever the data


def read_csv_metrics(path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_logs_scalars_at_the_global_step(tmp_path, fast_monitor_kwargs) -> None:
    monitor = MemorizationMonitor(**fast_monitor_kwargs)
    logger = CSVLogger(tmp_path, name="csv")
    trainer = make_trainer(tmp_path, [monitor], logger=logger)
    trainer.fit(make_module(), datamodule=make_data())
    rows = [r for r in read_csv_metrics(logger.log_dir + "/metrics.csv") if r.get("memorization/score")]
    assert [int(r["step"]) for r in rows] == [0, 2, 4, 6]  # baseline + every 2 steps
    for key in ("memorization/score", "memorization/flagged_fraction", "memorization/effective_dim",
                "memorization/mu_max", "memorization/min_mu", "memorization/asymmetry", "memorization/nn_rate",
                "memorization/seconds", "memorization/partial"):
        assert all(math.isfinite(float(r[key])) for r in rows), key
    assert "memorization/score" in trainer.callback_metrics  # monitorable by ModelCheckpoint
    assert [h["step"] for h in monitor.history] == [0, 2, 4, 6]
    assert 0.0 <= monitor.history[-1]["score"] <= 1.0


def test_epoch_schedule(tmp_path, fast_monitor_kwargs) -> None:
    kwargs = fast_monitor_kwargs | {"every_n_train_steps": None, "every_n_epochs": 1, "check_on_train_start": False}
    monitor = MemorizationMonitor(**kwargs)
    trainer = make_trainer(tmp_path, [monitor], max_steps=12)  # 64 samples / 16 per batch: 4 steps an epoch
    trainer.fit(make_module(), datamodule=make_data())
    assert [h["step"] for h in monitor.history] == [4, 8, 12]


def test_validate_under_inference_mode_leaves_no_gradients(tmp_path, fast_monitor_kwargs) -> None:
    module = make_module()
    monitor = MemorizationMonitor(**fast_monitor_kwargs)
    trainer = make_trainer(tmp_path, [monitor], limit_val_batches=1)
    trainer.validate(module, datamodule=make_data())
    assert len(monitor.history) == 1 and math.isfinite(monitor.history[0]["score"])
    assert all(p.grad is None for p in module.parameters())


def test_validate_then_fit_then_validate(tmp_path, fast_monitor_kwargs) -> None:
    """One monitor across stages: inference-mode states from validate() must not break fit()."""
    module, data = make_module(), make_data()
    monitor = MemorizationMonitor(**fast_monitor_kwargs)
    trainer = make_trainer(tmp_path, [monitor], limit_val_batches=1, max_steps=2)
    trainer.validate(module, datamodule=data)
    trainer.fit(module, datamodule=data)
    trainer.validate(module, datamodule=data)
    assert [h["step"] for h in monitor.history] == [0, 0, 2, 2] and monitor.failures == 0


def test_no_step_zero_check_during_accumulation(tmp_path, fast_monitor_kwargs) -> None:
    monitor = MemorizationMonitor(**(fast_monitor_kwargs | {"check_on_train_start": False}))
    trainer = make_trainer(tmp_path, [monitor], max_steps=4, accumulate_grad_batches=2)
    trainer.fit(make_module(), datamodule=make_data())
    assert [h["step"] for h in monitor.history] == [2, 4]


def test_resumed_run_keeps_its_metrics_monitorable(tmp_path, fast_monitor_kwargs) -> None:
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1)
    first = MemorizationMonitor(**fast_monitor_kwargs)
    make_trainer(tmp_path, [first, ckpt], max_steps=2, enable_checkpointing=True).fit(make_module(),
                                                                                     datamodule=make_data())
    resumed = MemorizationMonitor(**(fast_monitor_kwargs | {"every_n_train_steps": 100}))
    trainer = make_trainer(tmp_path, [resumed], max_steps=3)
    trainer.fit(make_module(), datamodule=make_data(), ckpt_path=str(tmp_path / "ckpt" / "epoch=0-step=2.ckpt"))
    assert trainer.callback_metrics["memorization/score"].item() == pytest.approx(first.history[-1]["score"])


@pytest.mark.parametrize(
    ("series", "stop_step"),
    [([0.0, 0.1, 0.5, 0.6, 0.7, 0.8, 0.9], 6), ([0.0] * 7, None), ([0.6] * 7, None)],
)
def test_stops_on_a_rising_series_only(tmp_path, fast_monitor_kwargs, series, stop_step) -> None:
    stop = StopConfig(monitor=SCORE, threshold=0.3, min_delta=0.05, patience=2)
    monitor = ScriptedMonitor(series, **fast_monitor_kwargs, stop=stop)
    trainer = make_trainer(tmp_path, [monitor], max_steps=12)
    trainer.fit(make_module(), datamodule=make_data())
    assert monitor.stopped_step == stop_step
    # checks at 0, 2, 4, 6 (stop) or up to 12; never a decision without a fresh measurement
    assert trainer.global_step == (stop_step if stop_step is not None else 12)
    assert len(monitor.history) == (4 if stop_step else 7)


def test_warn_only(tmp_path, fast_monitor_kwargs) -> None:
    monitor = ScriptedMonitor([0.0, 0.5, 0.6, 0.7], **fast_monitor_kwargs,
                              stop=StopConfig(monitor=SCORE, threshold=0.3, patience=1, stop_training=False))
    trainer = make_trainer(tmp_path, [monitor], max_steps=6)
    with pytest.warns(UserWarning, match="training goes on"):
        trainer.fit(make_module(), datamodule=make_data())
    assert monitor.stopped_step == 2 and trainer.global_step == 6


def weights_after(tmp_path, steps: int) -> dict[str, torch.Tensor]:
    """The tiny model's weights after ``steps`` plain training steps (a run with the monitor is bit-identical)."""
    module = make_module()
    make_trainer(tmp_path / "reference", [], max_steps=steps).fit(module, datamodule=make_data())
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_a_memorizing_run_ends_with_the_weights_of_its_last_safe_check(tmp_path, fast_monitor_kwargs) -> None:
    """Checks at 0 and 2 are quiet (safe), 4 alarms (0.5 > 0.3 and risen), 6 alarms again and fires (patience 2):
    the model ends with the weights of step 2, and safe.ckpt beside last.ckpt holds them."""
    stop = StopConfig(monitor=SCORE, threshold=0.3, min_delta=0.05, patience=2, restore_safe_weights=True)
    monitor = ScriptedMonitor([0.0, 0.1, 0.5, 0.6], **fast_monitor_kwargs, stop=stop)
    last = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="last", every_n_train_steps=2)
    module = make_module()
    trainer = make_trainer(tmp_path, [monitor, last], max_steps=12, enable_checkpointing=True)
    trainer.fit(module, datamodule=make_data())
    assert (monitor.stopped_step, monitor.safe_step, trainer.global_step) == (6, 2, 6)
    safe = weights_after(tmp_path, 2)
    assert [k for k, v in module.state_dict().items() if not torch.equal(v, safe[k])] == []
    late = weights_after(tmp_path, 6)
    assert any(not torch.equal(v, late[k]) for k, v in module.state_dict().items())  # not the stop step's weights
    checkpoint = torch.load(tmp_path / "ckpt" / "safe.ckpt", weights_only=True, map_location="cpu")
    assert checkpoint["global_step"] == 2
    assert all(torch.equal(checkpoint["state_dict"][k], safe[k]) for k in safe)
    (state,) = [v for k, v in checkpoint["callbacks"].items() if k.startswith("ScriptedMonitor")]
    assert state["safe_step"] == 2


def test_without_restore_the_model_keeps_its_last_weights_and_no_copy_is_made(tmp_path, fast_monitor_kwargs) -> None:
    monitor = ScriptedMonitor([0.0, 0.1, 0.5, 0.6], **fast_monitor_kwargs,
                              stop=StopConfig(monitor=SCORE, threshold=0.3, min_delta=0.05, patience=2))
    module = make_module()
    make_trainer(tmp_path, [monitor], max_steps=12).fit(module, datamodule=make_data())
    assert (monitor.stopped_step, monitor.safe_step) == (6, 2)
    assert monitor.watch.safe_weights.state is None  # no host copy unless asked for
    final = weights_after(tmp_path, 6)
    assert all(torch.equal(v, final[k]) for k, v in module.state_dict().items())
    assert not (tmp_path / "checkpoints" / "safe.ckpt").exists()  # checkpointing disabled: no safe.ckpt


def test_light_checks_log_the_loss_gap_between_full_checks(tmp_path, fast_monitor_kwargs) -> None:
    """every_n_checks=2: the baseline and every second check measure the probes, the others the loss gap alone;
    the plot and the console line cope with rows that lack the probe statistics."""
    kwargs = fast_monitor_kwargs | {"probes": ProbeConfig(num_samples=8, num_sampling_steps=5, every_n_checks=2),
                                    "save_plot": True, "stop": StopConfig(monitor=SCORE)}
    monitor = MemorizationMonitor(**kwargs)
    trainer = make_trainer(tmp_path, [monitor])
    trainer.fit(make_module(), datamodule=make_data())
    assert [h["step"] for h in monitor.history] == [0, 2, 4, 6]
    assert ["score" in h for h in monitor.history] == [True, False, True, False]
    assert all(math.isfinite(h["loss_gap"]) for h in monitor.history)
    assert monitor.safe_step == 4  # only checks that measured the monitored score can be safe
    assert (tmp_path / "memorization.png").is_file()


def test_without_heldout_images_the_governed_checks_label_the_probes_and_the_flag_is_the_copy_rule(tmp_path) -> None:
    """No held-out images reach the watch (nothing set here measures them): the default stop is the copy rate, the
    governed baseline only samples and labels the probes (the later checks' tiers depend on this machine's timing),
    NaN sharpness keys reach the logger and the plot, and the flag is the 1/3 rule at every check."""
    probes = ProbeConfig(num_samples=8, num_sampling_steps=5, loss_gap_images=0, copy_null_images=0)
    assert not probes.uses_heldout and ProbeConfig().uses_heldout and ProbeConfig(loss_gap_images=0).uses_heldout
    monitor = MemorizationMonitor(probes=probes, every_n_train_steps=2, save_plot=True, media="none",
                                  stop=StopConfig(stop_training=False))
    logger = CSVLogger(tmp_path, name="csv")
    trainer = make_trainer(tmp_path, [monitor], logger=logger)
    trainer.fit(make_module(), datamodule=make_data())
    assert monitor.watch.monitor == "memorization/nn_rate_lower"
    assert [h["step"] for h in monitor.history] == [0, 2, 4, 6]
    assert all(math.isfinite(h["nn_rate_lower"]) for h in monitor.history)
    first = monitor.history[0]
    assert math.isnan(first["score"]) and first["probes_measured"] == 8  # a full check's cost is predicted
    assert all(h["flagged_fraction"] == h["nn_rate"] and math.isnan(h["flag_fpr"]) for h in monitor.history)
    rows = [r for r in read_csv_metrics(logger.log_dir + "/metrics.csv") if r.get("memorization/nn_rate")]
    assert len(rows) == 4
    assert (tmp_path / "csv" / "version_0" / "memorization.png").is_file()  # the plot copes with the NaN rows
