"""Watch a `diffusers <https://github.com/huggingface/diffusers>`_ UNet with memcallback.

Two ways in, both exposing the :class:`memcallback.DiffusionModel` protocol (``schedule``,
``prediction_type``, ``data_shape``, ``model_output``):

* **A LightningModule that trains a diffusers UNet** mixes in :class:`DiffusersProtocolMixin` and keeps
  its network in ``self.unet`` and its scheduler in ``self.noise_scheduler`` (the names of diffusers'
  training examples); nothing else changes, and :class:`memcallback.MemorizationMonitor` accepts it::

      class LitUNet(DiffusersProtocolMixin, pl.LightningModule):
          def __init__(self):
              super().__init__()
              self.unet = UNet2DModel(sample_size=32, in_channels=3, out_channels=3)
              self.noise_scheduler = DDPMScheduler(num_train_timesteps=1000)
          # training_step / configure_optimizers as usual

* **A UNet outside Lightning** (a notebook, an audit of saved weights) is wrapped by
  :class:`DiffusersModel` and handed to :func:`memcallback.analyze`::

      report = analyze(DiffusersModel(unet, scheduler), num_samples=16, sigmas=(0.1,))

How diffusers maps onto memcallback:

* Schedule: diffusers' DDPM-family schedulers (``DDPMScheduler``, ``DDIMScheduler``, and any scheduler
  with a per-timestep ``alphas_cumprod`` table) noise as ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``
  at training timesteps ``t = 0 .. T-1``: the same variance-preserving process and indexing as
  :class:`memcallback.NoiseSchedule`, built from the same ``alphas_cumprod``.
* Prediction type: ``scheduler.config.prediction_type`` ``"epsilon"``, ``"v_prediction"`` or ``"sample"``
  keeps its name. diffusers' velocity (``scheduler.get_velocity``) is ``v = alpha_t eps - sigma_t x_0``,
  exactly the convention of :mod:`memcallback.diffusion.parameterization`, which converts it to the
  score ``s = -(alpha_t v + sigma_t x_t) / sigma_t``.
* Network call: ``model_output(x_t, t, cond) = unet(x_t, t, <cond>).sample``, run under
  :func:`~memcallback.adapters.math_attention` so the attention blocks can be differentiated twice.
* Conditioning: ``cond`` goes to ``encoder_hidden_states`` for a ``UNet2DConditionModel`` (text or
  other embeddings) and to ``class_labels`` for a class-conditional ``UNet2DModel``. ``cond=None`` is
  the protocol's null condition: it becomes ``null_cond``, one condition without a batch dimension that
  you provide (e.g. the ``[77, 768]`` embedding of the empty prompt, or the label your model was trained
  with for "no class"), repeated over the batch.
* Prompts as conditions: with ``prompt_embeds`` (``[P, seq, dim]``, the text encoder's embeddings of ``P``
  prompts), an integer condition ``c`` stands for prompt ``c``, so the conditional metrics
  (``ConditionalConfig(labels=(0, 1))``) are measured per prompt.

The adapter works on the objects' attributes (``alphas_cumprod``, ``config``, the UNet's ``forward``);
it does not import diffusers itself. Install both with ``pip install memcallback[diffusers]``.
Attention processors outside PyTorch's ``scaled_dot_product_attention`` (xFormers, flash-attn) are not
covered by :func:`math_attention`: call ``unet.set_default_attn_processor()`` before measuring.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from memcallback.diffusion import NoiseSchedule
from memcallback.diffusion.attention import math_attention

#: diffusers' ``prediction_type`` names and the memcallback names they map to.
PREDICTION_TYPES = {"epsilon": "epsilon", "v_prediction": "v_prediction", "sample": "sample"}
#: Replaces a zero final ``alphas_cumprod`` (zero terminal SNR, ``rescale_betas_zero_snr=True``): the value
#: diffusers' own Euler schedulers substitute, so that ``x_0 = (x_T - sigma_T eps) / alpha_T`` stays finite.
ZERO_SNR_ALPHAS_CUMPROD = 2.0**-24


def schedule_from_diffusers(scheduler: Any) -> NoiseSchedule:
    """The :class:`~memcallback.NoiseSchedule` a diffusers scheduler trains with.

    Reads ``scheduler.alphas_cumprod`` (``abar_t``, ``t = 0 .. T-1``): ``alpha_t = sqrt(abar_t)``,
    ``sigma_t = sqrt(1 - abar_t)``. A zero final entry (zero terminal SNR) is replaced by
    :data:`ZERO_SNR_ALPHAS_CUMPROD`.

    Args:
        scheduler: a ``DDPMScheduler``, ``DDIMScheduler`` or any scheduler with a 1-D ``alphas_cumprod``.

    Raises:
        TypeError: the scheduler has no ``alphas_cumprod`` (flow-matching and variance-exploding
            schedulers such as ``FlowMatchEulerDiscreteScheduler`` are not variance preserving).
        ValueError: the table is not a valid variance-preserving schedule.
    """
    abar = getattr(scheduler, "alphas_cumprod", None)
    if abar is None:
        raise TypeError(
            f"{type(scheduler).__name__} has no `alphas_cumprod`, so it is not a variance-preserving (DDPM-family) "
            "scheduler memcallback can map. Use the DDPMScheduler or DDIMScheduler your model was trained with; "
            "flow-matching and variance-exploding schedulers are not supported."
        )
    abar = torch.as_tensor(abar, dtype=torch.float64).detach().cpu().clone()
    if abar.ndim == 1 and abar.numel() > 1 and abar[-1] == 0:
        abar[-1] = ZERO_SNR_ALPHAS_CUMPROD
    try:
        return NoiseSchedule(abar)
    except ValueError as err:
        raise ValueError(f"{type(scheduler).__name__}.alphas_cumprod is not a usable schedule: {err}") from err


def prediction_type_from_diffusers(scheduler: Any) -> str:
    """memcallback's name for ``scheduler.config.prediction_type`` (see :data:`PREDICTION_TYPES`).

    Raises:
        ValueError: the scheduler has no ``prediction_type`` or one memcallback does not know.
    """
    config = getattr(scheduler, "config", None)
    value = config.get("prediction_type") if isinstance(config, Mapping) else getattr(config, "prediction_type", None)
    if value not in PREDICTION_TYPES:
        raise ValueError(
            f"{type(scheduler).__name__}.config.prediction_type={value!r} cannot be mapped; memcallback supports "
            f"{sorted(PREDICTION_TYPES)}."
        )
    return PREDICTION_TYPES[value]


def data_shape_from_unet(unet: nn.Module) -> tuple[int, int, int]:
    """``(in_channels, height, width)`` from a diffusers UNet's ``config`` (``in_channels``, ``sample_size``).

    Raises:
        ValueError: the config does not give both (e.g. ``sample_size=None``); pass ``data_shape`` instead.
    """
    config = getattr(unet, "config", None)
    channels, size = getattr(config, "in_channels", None), getattr(config, "sample_size", None)
    if isinstance(size, int):
        size = (size, size)
    if not isinstance(channels, int) or not isinstance(size, Sequence) or len(size) != 2:
        raise ValueError(
            f"Cannot read the sample shape from {type(unet).__name__}.config (in_channels={channels!r}, "
            f"sample_size={size!r}); give it explicitly, e.g. data_shape=(4, 64, 64)."
        )
    return int(channels), int(size[0]), int(size[1])


def condition_argument(unet: nn.Module) -> str | None:
    """The keyword of ``unet.forward`` that takes the condition, or ``None`` for an unconditional UNet.

    ``encoder_hidden_states`` when ``forward`` has it (``UNet2DConditionModel``), else ``class_labels`` when
    the UNet has a class embedding (a class-conditional ``UNet2DModel``).
    """
    parameters = inspect.signature(unet.forward).parameters
    if "encoder_hidden_states" in parameters:
        return "encoder_hidden_states"
    if "class_labels" in parameters and getattr(unet, "class_embedding", None) is not None:
        return "class_labels"
    return None


def unet_output(
    unet: nn.Module,
    x_t: Tensor,
    t: Tensor,
    cond: Tensor | None = None,
    *,
    null_cond: Tensor | None = None,
    cond_argument: str | None = None,
    prompt_embeds: Tensor | None = None,
) -> Tensor:
    """The raw prediction ``unet(x_t, t, **{cond_argument: cond})`` on the math attention backend.

    Args:
        unet: a diffusers UNet (anything whose ``forward(sample, timestep, ..., return_dict=False)`` returns
            a tuple with the prediction first).
        x_t: ``[B, *data_shape]`` noisy samples.
        t: ``[B]`` integer timesteps.
        cond: ``[B, ...]`` conditions, or ``None`` for the null condition.
        null_cond: one condition without batch dimension, used (repeated ``B`` times) when ``cond`` is None.
        cond_argument: the UNet keyword that receives the condition (``None``: unconditional UNet).
        prompt_embeds: ``[P, ...]`` conditions that integer conditions index (prompt ``c`` for ``c``), or ``None``.

    Raises:
        ValueError: a condition is needed (``encoder_hidden_states`` is required) but neither ``cond`` nor
            ``null_cond`` is given, or a condition is given to a UNet that takes none.
    """
    if cond is not None and prompt_embeds is not None and not cond.is_floating_point():
        cond = prompt_embeds.to(x_t.device)[cond.to(x_t.device)]
    if cond is None and null_cond is not None:
        cond = null_cond.to(x_t.device).expand(x_t.shape[0], *null_cond.shape)
    if cond is not None and cond.is_floating_point():
        cond = cond.to(x_t.dtype)
    kwargs: dict[str, Tensor] = {}
    if cond is not None:
        if cond_argument is None:
            raise ValueError(f"{type(unet).__name__} takes no condition (no encoder_hidden_states or class_labels "
                             "argument), but one was given.")
        kwargs[cond_argument] = cond
    elif cond_argument == "encoder_hidden_states":
        raise ValueError(
            f"{type(unet).__name__} needs encoder_hidden_states even for unconditional predictions: give "
            "null_cond, the embedding of the empty prompt without batch dimension (e.g. shape [77, 768])."
        )
    with math_attention():
        return unet(x_t, t, **kwargs, return_dict=False)[0]


class DiffusersProtocolMixin:
    """Makes a module that holds ``self.unet`` and ``self.noise_scheduler`` a :class:`memcallback.DiffusionModel`.

    Put it before ``pl.LightningModule`` in the bases. The protocol members are read from the two
    attributes when the monitor needs them, so they follow the module to any device. To change one,
    define it in your class: ``data_shape = (4, 64, 64)`` for a UNet whose config has no ``sample_size``,
    ``null_cond`` (a tensor or buffer, one condition without batch dimension) for a conditional UNet,
    ``cond_argument`` to route conditions to another UNet keyword.

    Attributes:
        null_cond: optional; the condition that stands for "no condition" (absent or ``None``: the UNet is
            called without one).
        cond_argument: UNet keyword for conditions; ``None`` picks ``encoder_hidden_states`` or
            ``class_labels`` from the UNet's signature.
    """

    cond_argument: str | None = None

    def _member(self, name: str) -> Any:
        value = getattr(self, name, None)
        if value is None:
            raise TypeError(f"{type(self).__name__} uses DiffusersProtocolMixin but has no `self.{name}`: assign "
                            "your diffusers UNet to `self.unet` and its scheduler to `self.noise_scheduler`.")
        return value

    @property
    def schedule(self) -> NoiseSchedule:
        """The noise schedule of ``self.noise_scheduler`` (built once per scheduler object)."""
        scheduler = self._member("noise_scheduler")
        cached = self.__dict__.get("_memcallback_schedule")
        if cached is None or cached[0] is not scheduler:
            cached = (scheduler, schedule_from_diffusers(scheduler))
            self.__dict__["_memcallback_schedule"] = cached
        return cached[1]

    @property
    def prediction_type(self) -> str:
        """memcallback's name for ``self.noise_scheduler.config.prediction_type``."""
        return prediction_type_from_diffusers(self._member("noise_scheduler"))

    @property
    def data_shape(self) -> tuple[int, ...]:
        """``(in_channels, height, width)`` from ``self.unet.config``."""
        return data_shape_from_unet(self._member("unet"))

    def model_output(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """``self.unet(x_t, t, cond).sample`` on the math attention backend (see :func:`unet_output`)."""
        unet = self._member("unet")
        argument = self.cond_argument if self.cond_argument is not None else condition_argument(unet)
        return unet_output(unet, x_t, t, cond, null_cond=getattr(self, "null_cond", None), cond_argument=argument,
                           prompt_embeds=getattr(self, "prompt_embeds", None))


class DiffusersModel(DiffusersProtocolMixin, nn.Module):
    """A diffusers UNet and its scheduler as a :class:`memcallback.DiffusionModel`, for :func:`memcallback.analyze`.

    The UNet is registered as a submodule (``.to(device)`` moves it, ``analyze`` puts it in eval mode
    and restores it); the scheduler is only read.

    Args:
        unet: a ``UNet2DModel`` or ``UNet2DConditionModel``.
        noise_scheduler: the ``DDPMScheduler`` / ``DDIMScheduler`` it was trained with.
        data_shape: shape of one sample; ``None`` reads ``(in_channels, sample_size, sample_size)`` from
            the UNet's config.
        null_cond: for a conditional UNet, the null condition without batch dimension (the empty-prompt
            embedding ``[seq, dim]`` of a ``UNet2DConditionModel``; the "no class" label of a
            class-conditional ``UNet2DModel``). Stored as a non-persistent buffer.
        cond_argument: UNet keyword for conditions (``None``: from the UNet's signature).
        prompt_embeds: ``[P, seq, dim]`` embeddings of ``P`` prompts: integer condition ``c`` is prompt ``c`` (the
            conditional metrics per prompt). Stored as a non-persistent buffer.

    Example:
        >>> model = DiffusersModel(UNet2DModel(sample_size=8, in_channels=1, out_channels=1),
        ...                        DDPMScheduler(num_train_timesteps=1000))
        >>> report = memcallback.analyze(model, num_samples=8)
    """

    def __init__(
        self,
        unet: nn.Module,
        noise_scheduler: Any,
        data_shape: Sequence[int] | None = None,
        null_cond: Tensor | None = None,
        cond_argument: str | None = None,
        prompt_embeds: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.unet = unet
        self.noise_scheduler = noise_scheduler
        self.register_buffer("null_cond", null_cond, persistent=False)
        self.register_buffer("prompt_embeds", prompt_embeds, persistent=False)
        self.cond_argument = cond_argument if cond_argument is not None else condition_argument(unet)
        self._data_shape = data_shape_from_unet(unet) if data_shape is None else tuple(int(n) for n in data_shape)
        prediction_type_from_diffusers(noise_scheduler)  # fail here rather than at the first measurement
        schedule_from_diffusers(noise_scheduler)

    @property
    def data_shape(self) -> tuple[int, ...]:
        """The given ``data_shape``, or the one read from the UNet's config."""
        return self._data_shape
