"""Issue 6, item 1: with the monitor on, training is bit-identical to a run without it.

Weights (EMA weights included), optimizer state and the global RNG state after training are compared
exactly, for step and epoch schedules, with EMA on and off, with gradient accumulation, with a check on
the last step, and on the matrix-free path (whose solvers draw random start vectors).
"""

from __future__ import annotations

import pytest
import torch
from tiny_training import make_data, make_module, make_trainer

from memcallback import MemorizationMonitor, SharpnessConfig

# id: (monitor arguments, trainer arguments, EMA decay, steps that must have been checked)
CASES = {
    "steps-last-step": ({"every_n_train_steps": 3}, {"max_steps": 9}, None, [0, 3, 6, 9]),
    "steps-ema-accumulation": ({"every_n_train_steps": 2}, {"max_steps": 6, "accumulate_grad_batches": 2}, 0.9,
                               [0, 2, 4, 6]),
    "epochs-last-step": ({"every_n_train_steps": None, "every_n_epochs": 1}, {"max_steps": 8}, None, [0, 4, 8]),
    "epochs-ema-accumulation": ({"every_n_train_steps": None, "every_n_epochs": 1},
                                {"max_steps": 9, "accumulate_grad_batches": 2}, 0.9, [0, 2, 4, 6, 8, 9]),
    "lanczos-warm-start": ({"every_n_train_steps": 2, "sharpness": SharpnessConfig(k=4, solver="lanczos")},
                           {"max_steps": 6}, None, [0, 2, 4, 6]),
}


def train(tmp_path, callbacks: list, trainer_kwargs: dict, ema_decay: float | None) -> dict[str, torch.Tensor]:
    """Train the tiny model; return its weights, its optimizer's tensors and the global RNG state afterwards."""
    module = make_module(ema_decay)
    trainer = make_trainer(tmp_path, callbacks, **trainer_kwargs)
    trainer.fit(module, datamodule=make_data())
    state = {k: v.clone() for k, v in module.state_dict().items()}
    opt = trainer.optimizers[0].state_dict()["state"]
    state.update({f"opt/{i}/{k}": v.clone() for i, s in opt.items() for k, v in s.items() if torch.is_tensor(v)})
    state["rng/torch"] = torch.get_rng_state()
    return state


@pytest.mark.parametrize(("monitor_kwargs", "trainer_kwargs", "ema_decay", "checked"), CASES.values(), ids=CASES.keys())
def test_training_is_bit_identical_with_and_without_the_monitor(tmp_path, fast_monitor_kwargs, monitor_kwargs,
                                                                 trainer_kwargs, ema_decay, checked) -> None:
    monitor = MemorizationMonitor(**(fast_monitor_kwargs | monitor_kwargs | {"ground_truth": True}))
    plain = train(tmp_path, [], trainer_kwargs, ema_decay)
    watched = train(tmp_path, [monitor], trainer_kwargs, ema_decay)
    assert [h["step"] for h in monitor.history] == checked and monitor.failures == 0
    assert plain.keys() == watched.keys()
    assert any(k.startswith("opt/") for k in plain) and (ema_decay is None) != any(k.startswith("ema.") for k in plain)
    assert [k for k in plain if not torch.equal(plain[k], watched[k])] == []
