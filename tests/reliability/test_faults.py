"""Issue 6, item 4: faults inside a check never reach training.

A model output with NaN or Inf, a Jacobian with NaN (finite outputs, undefined gradients) on the dense and the
matrix-free path, and an out-of-memory error raised by the network in the middle of a measurement: the check is
marked failed on every later check, logged in ``memorization/check_failures``, warned about once, training runs
to its end with bit-identical weights, and the monitor's hook leaves train/eval flags, ``requires_grad``,
``.grad``, devices, grad mode and the RNG state exactly as it found them. Neither a solver that does not reach
its tolerance nor a time budget overrun is a failure: the check is kept (``converged_fraction < 1``, or
``partial = 1``) and the first is warned about once.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from reliability_helpers import StateSnapshots, same_state
from tiny_training import make_data, make_module, make_trainer

from memcallback import MemorizationMonitor, SharpnessConfig, StopConfig
from memcallback.app.models import DiffusionModule

FAIL_FROM_STEP = 2  # the baseline check at step 0 succeeds, every later one (2, 4, 6, 8) fails


def broken_output(module: DiffusionModule, monkeypatch, corrupt: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
    """Corrupt the model's output while it is measured (eval mode) from FAIL_FROM_STEP on; training never sees it."""
    original = module.model_output

    def model_output(x_t, t, cond=None):
        out = original(x_t, t, cond)
        return corrupt(out, x_t) if not module.training and module.global_step >= FAIL_FROM_STEP else out

    monkeypatch.setattr(module, "model_output", model_output)


def nan_gradient(out: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
    """Finite values, NaN derivatives: the gradient of the untaken ``sqrt`` branch of a ``where`` is NaN."""
    return out + torch.where(x_t > 1e9, torch.sqrt(x_t - 1e9), torch.zeros_like(x_t))


def out_of_memory(module: DiffusionModule, monkeypatch) -> None:
    """The network runs out of memory in the middle of a measurement (after sampling, inside the Jacobian)."""
    original, calls = module.model_output, {}

    def model_output(x_t, t, cond=None):
        if not module.training and module.global_step >= FAIL_FROM_STEP:
            calls[module.global_step] = calls.get(module.global_step, 0) + 1
            if calls[module.global_step] == 6:  # the first call after the 5 sampling steps of this check
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(x_t, t, cond)

    monkeypatch.setattr(module, "model_output", model_output)


# id: (fault injection, extra monitor arguments, what the one warning says)
FAULTS = {
    "nan-output": (lambda m, mp: broken_output(m, mp, lambda out, x: out * float("nan")), {}, "non-finite values"),
    "inf-output": (lambda m, mp: broken_output(m, mp, lambda out, x: out + float("inf")), {}, "non-finite values"),
    "nan-jacobian-dense": (lambda m, mp: broken_output(m, mp, nan_gradient), {"solver": "dense"},
                           "Jacobian has non-finite entries"),
    "nan-jacobian-lanczos": (lambda m, mp: broken_output(m, mp, nan_gradient), {"solver": "lanczos"},
                             "returned non-finite values"),
    "out-of-memory": (out_of_memory, {"solver": "dense"}, "OutOfMemoryError: CUDA out of memory"),
}


def read_failures(log_dir: str) -> dict[int, float]:
    with open(f"{log_dir}/metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return {int(r["step"]): float(r["memorization/check_failures"]) for r in rows if r["memorization/check_failures"]}


def partly_frozen_module() -> DiffusionModule:
    """The tiny model with a frozen part and a part kept in eval mode, which must stay so."""
    module = make_module()
    module.network.time_embed.requires_grad_(False)
    module.network.output.eval()
    return module


@pytest.mark.filterwarnings(r"ignore:Found \d+ module\(s\) in eval mode")
@pytest.mark.parametrize(("inject", "monitor_kwargs", "message"), FAULTS.values(), ids=FAULTS.keys())
def test_a_failing_check_is_skipped_logged_and_reported_once(tmp_path, fast_monitor_kwargs, monkeypatch, inject,
                                                             monitor_kwargs, message) -> None:
    plain = partly_frozen_module()
    make_trainer(tmp_path, [], max_steps=8).fit(plain, datamodule=make_data())

    module = partly_frozen_module()
    inject(module, monkeypatch)
    sharpness = SharpnessConfig(k=4, **monitor_kwargs)
    monitor = MemorizationMonitor(**(fast_monitor_kwargs | {"sharpness": sharpness}))
    before, after = StateSnapshots(), StateSnapshots()
    logger = CSVLogger(tmp_path, name="csv")
    trainer = make_trainer(tmp_path, [before, monitor, after], max_steps=8, logger=logger)
    with pytest.warns(UserWarning, match="failed and was skipped") as record:
        trainer.fit(module, datamodule=make_data())

    warned = [str(w.message) for w in record if "failed and was skipped" in str(w.message)]
    assert len(warned) == 1 and message in warned[0], warned
    assert trainer.global_step == 8 and monitor.failures == 4  # steps 2, 4, 6, 8
    assert [h["step"] for h in monitor.history] == [0]  # a failed check leaves no values behind
    assert trainer.callback_metrics["memorization/check_failures"].item() == 4
    assert read_failures(logger.log_dir) == {0: 0.0, 2: 1.0, 4: 2.0, 6: 3.0, 8: 4.0}
    assert len(before.states) == len(after.states) == 8
    assert all(same_state(b, a) for b, a in zip(before.states, after.states, strict=True))
    assert not any(p.requires_grad for p in module.network.time_embed.parameters())
    assert not module.network.output.training
    assert module.training and torch.is_grad_enabled()
    weights, reference = module.network.state_dict(), plain.network.state_dict()
    assert all(torch.equal(weights[k], reference[k]) for k in reference)


def test_time_budget(tmp_path, fast_monitor_kwargs, recwarn) -> None:
    """A real budget nothing can meet: every check, the baseline included, is cut short, kept and marked partial;
    nothing is counted as failed and the values it did not reach are NaN (so they never move the stop rule)."""
    stop = StopConfig(monitor="memorization/score")  # the loss gap, measured first, is never cut short
    monitor = MemorizationMonitor(**fast_monitor_kwargs, time_budget_s=1e-6, stop=stop)
    logger = CSVLogger(tmp_path, name="csv")
    trainer = make_trainer(tmp_path, [monitor], max_steps=2, logger=logger)
    trainer.fit(make_module(), datamodule=make_data())
    assert monitor.failures == 0 and [h["step"] for h in monitor.history] == [0, 2]
    assert all(h["partial"] == 1.0 for h in monitor.history)
    assert trainer.callback_metrics["memorization/partial"].item() == 1.0
    assert math.isnan(monitor.history[0]["score"]) and monitor.safe_step is None
    assert not math.isfinite(monitor.rule.best)  # NaN values never move the stop rule
    assert not any("failed and was skipped" in str(w.message) for w in recwarn)
    assert read_failures(logger.log_dir) == {0: 0.0, 2: 0.0}


def test_an_unconverged_solver_is_logged_and_warned_once_not_failed(tmp_path, fast_monitor_kwargs) -> None:
    """Decision: Lanczos stopping short of ``tol`` keeps the check (values are the best Ritz estimates) and logs
    ``converged_fraction < 1``; a failed check would silently turn monitoring off for a too-strict ``tol``."""
    sharpness = SharpnessConfig(k=4, solver="lanczos", krylov_steps=None, lanczos_iters=9, tol=1e-12)
    monitor = MemorizationMonitor(**(fast_monitor_kwargs | {"sharpness": sharpness}))
    trainer = make_trainer(tmp_path, [monitor], max_steps=4)
    with pytest.warns(UserWarning, match="did not reach tol=1e-12") as record:
        trainer.fit(make_module(), datamodule=make_data())
    assert sum("did not reach tol" in str(w.message) for w in record) == 1
    assert not any("failed and was skipped" in str(w.message) for w in record)
    assert monitor.failures == 0 and [h["step"] for h in monitor.history] == [0, 2, 4]
    assert all(h["converged_fraction"] < 1 and math.isfinite(h["score"]) for h in monitor.history)
    assert trainer.callback_metrics["memorization/converged_fraction"].item() < 1
    assert math.isfinite(monitor.rule.best)  # the values fed the stop rule


def test_a_converged_solver_does_not_warn(tmp_path, fast_monitor_kwargs, recwarn) -> None:
    monitor = MemorizationMonitor(**(fast_monitor_kwargs | {"sharpness": SharpnessConfig(k=4, solver="lanczos",
                                                                                          krylov_steps=None)}))
    make_trainer(tmp_path, [monitor], max_steps=2).fit(make_module(), datamodule=make_data())
    assert all(h["converged_fraction"] == 1.0 for h in monitor.history)
    assert not any("did not reach tol" in str(w.message) for w in recwarn)
