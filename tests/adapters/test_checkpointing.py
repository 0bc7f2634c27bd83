"""The safe folder on its own: a module without ``save_pretrained`` and a module-held average round-trip through
``weights.safetensors`` and ``averaged.safetensors``; a rewrite replaces the previous weights; a folder written
for another model is refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("safetensors")

from memcallback.adapters.checkpointing import AVERAGED_FILE, WEIGHTS_FILE, SafeFolder
from memcallback.core.weights import AveragedWeights


def test_a_plain_module_and_its_average_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    model, average = nn.Linear(3, 2), nn.Linear(3, 2)
    model.bias.requires_grad_(False)  # a frozen tensor: not written, taken from the model when read
    averaged = AveragedWeights.from_modules(average, model)
    folder = SafeFolder(tmp_path / "safe")
    folder.write(model, 4, averaged=averaged)
    assert folder.step() == 4 and {p.name for p in folder.path.iterdir()} == {WEIGHTS_FILE, AVERAGED_FILE,
                                                                              "safe.json"}
    written = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)
        average.weight.add_(1.0)
    folder.write(model, 6, averaged=averaged)  # replaces the previous safe weights
    state, values = folder.read(model, averaged)
    assert folder.step() == 6 and torch.equal(state["weight"], written["weight"] + 1.0)
    assert torch.equal(state["bias"], written["bias"])
    assert all(torch.equal(a, b) for a, b in zip(values, averaged.tensors()[0], strict=True))
    with pytest.raises(ValueError, match="written for another model"):
        folder.read(nn.Linear(4, 2))
