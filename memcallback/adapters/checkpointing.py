"""The safe weights on disk, in a folder that checkpoint rotation never deletes and resume never misparses.

diffusers' training scripts write ``accelerator.save_state`` folders named ``checkpoint-<step>`` into their output
directory, delete the oldest ones whose name starts with ``checkpoint`` (``--checkpoints_total_limit``) and resume
from the one with the largest ``int(name.split("-")[1])`` (``--resume_from_checkpoint latest``). A safe checkpoint
stored among them would be deleted, or break both. :class:`SafeFolder` writes the weights of every safe check to its
own folder beside them, by default ``<output_dir>/safe``, in the format the scripts save models in:

* ``unet/``: ``model.save_pretrained`` (a diffusers model, every parameter trained), loadable with
  ``UNet2DModel.from_pretrained(output_dir / "safe" / "unet")``; otherwise ``weights.safetensors`` with the tensors
  training changes (the trainable parameters, e.g. LoRA adapters, and the buffers), under ``state_dict`` names;
* ``unet_ema/``: ``EMAModel.save_pretrained`` (a diffusers ``EMAModel`` built with ``model_cls``), loadable the same
  way; otherwise ``averaged.safetensors`` with the averaged tensors in order;
* ``safe.json``: the step of the safe check.

A new folder is written beside the old one and swapped in, so a run killed while writing keeps the previous safe
weights. :meth:`SafeFolder.read` loads them back after a resume.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from memcallback.core.safe import trained_state
from memcallback.core.weights import AveragedWeights

#: The folder names, as diffusers' scripts name the UNet and its EMA in their checkpoints.
MODEL_FOLDER, EMA_FOLDER = "unet", "unet_ema"
STEP_FILE, WEIGHTS_FILE, AVERAGED_FILE = "safe.json", "weights.safetensors", "averaged.safetensors"


class SafeFolder:
    """The weights of the last safe check, on disk.

    Args:
        path: the folder (e.g. ``Path(args.output_dir) / "safe"``); its name must not start with ``checkpoint``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.name.startswith("checkpoint"):
            raise ValueError(f"safe_dir={str(path)!r}: diffusers' scripts delete and parse every folder whose name "
                             "starts with 'checkpoint'; name it otherwise, e.g. <output_dir>/safe.")

    def write(self, model: nn.Module, step: int, ema: Any = None, averaged: AveragedWeights | None = None) -> None:
        """Write ``model`` (and its average) as the weights of safe check ``step``, replacing the previous ones.

        Args:
            model: the unwrapped model, holding the weights of the safe check.
            step: the step of the safe check.
            ema: the diffusers ``EMAModel`` behind ``averaged``, when it is one (saved with its ``save_pretrained``).
            averaged: the model's averaged copy, or ``None``.
        """
        from safetensors.torch import save_file

        new = self.path.with_name(self.path.name + ".new")
        shutil.rmtree(new, ignore_errors=True)
        new.mkdir(parents=True)
        if _saves_whole(model):
            model.save_pretrained(new / MODEL_FOLDER)
        else:
            save_file(_contiguous(trained_state(model)), str(new / WEIGHTS_FILE))
        if averaged is not None:
            if getattr(ema, "model_cls", None) is not None and getattr(ema, "model_config", None) is not None:
                ema.save_pretrained(new / EMA_FOLDER)
            else:
                save_file(_contiguous({str(i): t for i, t in enumerate(averaged.tensors()[0])}),
                          str(new / AVERAGED_FILE))
        (new / STEP_FILE).write_text(json.dumps({"step": step}))
        old = self.path.with_name(self.path.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if self.path.exists():
            self.path.rename(old)
        new.rename(self.path)
        shutil.rmtree(old, ignore_errors=True)

    def step(self) -> int | None:
        """The step of the safe weights on disk (``None``: none written)."""
        file = self.path / STEP_FILE
        return int(json.loads(file.read_text())["step"]) if file.is_file() else None

    def read(self, model: nn.Module,
             averaged: AveragedWeights | None = None) -> tuple[dict[str, Tensor], list[Tensor] | None]:
        """The safe weights on disk as a full host ``state_dict`` of ``model`` (tensors not written, which training
        does not change, taken from the model) and the averaged tensors in order (``None`` when none were written).
        """
        from safetensors.torch import load_file

        whole = self.path / MODEL_FOLDER
        saved = _load_folder(whole) if whole.is_dir() else load_file(str(self.path / WEIGHTS_FILE))
        state = {name: value.detach().to("cpu", copy=True) for name, value in model.state_dict().items()}
        unknown = sorted(k for k, v in saved.items() if k not in state or state[k].shape != v.shape)
        if unknown:
            raise ValueError(f"{self.path} holds tensors the model does not have, or of other shapes ({unknown[:3]}):"
                             " it was written for another model.")
        state.update(saved)
        values = None
        if averaged is not None:
            live = averaged.tensors()[1]
            if (self.path / EMA_FOLDER).is_dir():  # EMAModel.save_pretrained: a model whose parameters are the average
                ema_state = _load_folder(self.path / EMA_FOLDER)
                values = [ema_state[name] for name, _ in model.named_parameters()]
            elif (self.path / AVERAGED_FILE).is_file():
                ema_state = load_file(str(self.path / AVERAGED_FILE))
                values = [ema_state[str(i)] for i in range(len(ema_state))]
            if values is not None and len(values) != len(live):
                raise ValueError(f"{self.path} holds {len(values)} averaged tensors for {len(live)} of the "
                                 f"{averaged.name}: it was written for another model.")
        return state, values


def _saves_whole(model: nn.Module) -> bool:
    """Whether the model is saved whole with ``save_pretrained``: a diffusers-style model all of whose parameters are
    trained (a model with frozen parts, e.g. LoRA adapters on a frozen UNet, is saved as its changing tensors)."""
    return callable(getattr(model, "save_pretrained", None)) and all(p.requires_grad for p in model.parameters())


def _contiguous(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Host copies safetensors can write (contiguous, no shared storage)."""
    return {name: value.detach().to("cpu").contiguous().clone() for name, value in state.items()}


def _load_folder(folder: Path) -> dict[str, Tensor]:
    """The tensors of a ``save_pretrained`` folder (one or several ``.safetensors`` files)."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder} holds no .safetensors file.")
    state: dict[str, Tensor] = {}
    for file in files:
        state.update(load_file(str(file)))
    return state
