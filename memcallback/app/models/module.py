"""The reference diffusion LightningModule: trains a noise-prediction network and implements DiffusionModel."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from memcallback.app.models.ema import EMA
from memcallback.app.models.spec import build_network, network_spec
from memcallback.diffusion import NoiseSchedule, check_prediction_type, randn

TRAINABLE_PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


class DiffusionModule(pl.LightningModule):
    """Denoising diffusion training (Ho et al. 2020) for any network ``(x_t, t, cond) -> output``.

    Training minimizes ``E_{x0, t, eps} || f(x_t, t, c) - target ||^2`` with ``t ~ U{0..T-1}``,
    ``x_t = alpha_t x0 + sigma_t eps`` and the target of ``prediction_type``: ``eps`` (epsilon),
    ``v = alpha_t eps - sigma_t x0`` (v_prediction) or ``x0`` (sample). When the network is conditional
    (``network.num_classes`` is set) and batches carry labels, each label is replaced by the null label ``-1``
    with probability ``cond_drop_prob`` (classifier-free guidance training).

    Validation logs ``val/loss``: the same loss on held-out data at ``val_num_timesteps`` fixed, evenly spaced
    timesteps with noise from a generator seeded per batch, so the number is comparable across epochs. It is
    computed with the weights :meth:`model_output` uses (the EMA weights when EMA is on).

    The module implements :class:`memcallback.DiffusionModel` (``schedule``, ``prediction_type``,
    ``data_shape``, ``model_output``), so the memorization callback and the samplers accept it directly.

    Args:
        network: the network, or a spec ``{"_target_": ..., **kwargs}`` (what checkpoints store for the
            reference networks, so ``load_from_checkpoint(path)`` needs no arguments). For other networks pass
            ``network=`` to ``load_from_checkpoint``.
        schedule: noise schedule kind for :meth:`NoiseSchedule.create` (``linear``, ``cosine``, ``karras``).
        num_timesteps: number of discrete timesteps ``T``.
        prediction_type: ``epsilon``, ``v_prediction`` or ``sample``.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay (0 gives Adam).
        ema_decay: decay of the EMA weights, or ``None`` for no EMA.
        cond_drop_prob: probability of dropping a label during training (conditional networks only).
        schedule_kwargs: extra keyword arguments for the schedule (e.g. ``beta_end``).
        data_shape: shape of one sample; defaults to ``network.data_shape``.
        val_num_timesteps: number of fixed timesteps of the validation loss.
        val_seed: seed of the validation noise.
    """

    def __init__(
        self,
        network: nn.Module | Mapping[str, Any] | None,
        schedule: str = "linear",
        num_timesteps: int = 1000,
        prediction_type: str = "epsilon",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        ema_decay: float | None = None,
        cond_drop_prob: float = 0.1,
        schedule_kwargs: Mapping[str, float] | None = None,
        data_shape: Sequence[int] | None = None,
        val_num_timesteps: int = 10,
        val_seed: int = 0,
    ) -> None:
        super().__init__()
        if network is None:
            raise ValueError("DiffusionModule needs a network. When loading a checkpoint of a network without "
                             "`init_kwargs`, pass it: DiffusionModule.load_from_checkpoint(path, network=net).")
        if isinstance(network, Mapping):
            network = build_network(network)
        check_prediction_type(prediction_type)
        if prediction_type not in TRAINABLE_PREDICTION_TYPES:
            raise ValueError(f"DiffusionModule trains prediction_type in {TRAINABLE_PREDICTION_TYPES}, "
                             f"got {prediction_type!r}.")
        if lr <= 0 or weight_decay < 0:
            raise ValueError(f"need lr > 0 and weight_decay >= 0, got lr={lr}, weight_decay={weight_decay}.")
        if not 0.0 <= cond_drop_prob <= 1.0:
            raise ValueError(f"cond_drop_prob must lie in [0, 1], got {cond_drop_prob}.")
        if not 1 <= val_num_timesteps <= num_timesteps:
            raise ValueError(f"val_num_timesteps must lie in [1, num_timesteps={num_timesteps}], "
                             f"got {val_num_timesteps}.")
        shape = data_shape if data_shape is not None else getattr(network, "data_shape", None)
        if shape is None:
            raise ValueError("pass data_shape=(...) or use a network with a `data_shape` attribute.")
        # Plain containers (not OmegaConf nodes from Hydra), so checkpoints load with torch.load(weights_only=True).
        schedule_kwargs = dict(schedule_kwargs or {})
        data_shape = None if data_shape is None else [int(n) for n in data_shape]

        self.save_hyperparameters(ignore=["network"])
        self.hparams["network"] = network_spec(network)
        self.network = network
        self.schedule = NoiseSchedule.create(schedule, num_timesteps=num_timesteps, **schedule_kwargs)
        self.prediction_type = prediction_type
        self.data_shape = tuple(int(n) for n in shape)
        self.conditional = getattr(network, "num_classes", None) is not None
        self.ema = EMA(network, ema_decay) if ema_decay is not None else None

    # ------------------------------------------------------------------------------------------------
    # DiffusionModel protocol
    # ------------------------------------------------------------------------------------------------
    def model_output(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """The network prediction at ``(x_t, t)``; uses the EMA weights when EMA is on."""
        network = self.ema.module if self.ema is not None else self.network
        return network(x_t, t, cond)

    # ------------------------------------------------------------------------------------------------
    # Loss
    # ------------------------------------------------------------------------------------------------
    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """The regression target of ``prediction_type`` for clean data ``x0``, noise ``eps`` and timesteps ``t``."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "sample":
            return x0
        alpha, sigma = self.schedule.coefficients(t, x0)
        return alpha * noise - sigma * x0

    def _split_batch(self, batch: Tensor | Sequence[Tensor]) -> tuple[Tensor, Tensor | None]:
        if isinstance(batch, Tensor):
            return batch, None
        x0 = batch[0]
        labels = batch[1] if len(batch) > 1 and self.conditional else None
        return x0, labels

    def _loss(self, network: nn.Module, x0: Tensor, noise: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        x_t = self.schedule.add_noise(x0, noise, t)
        return F.mse_loss(network(x_t, t, cond), self.target(x0, noise, t))

    def training_step(self, batch: Tensor | Sequence[Tensor], batch_idx: int) -> Tensor:
        x0, labels = self._split_batch(batch)
        t = torch.randint(0, self.schedule.num_timesteps, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0)
        if labels is not None and self.hparams.cond_drop_prob > 0:
            drop = torch.rand(labels.shape, device=labels.device) < self.hparams.cond_drop_prob
            labels = torch.where(drop, torch.full_like(labels, -1), labels)
        loss = self._loss(self.network, x0, noise, t, labels)
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def validation_step(self, batch: Tensor | Sequence[Tensor], batch_idx: int) -> Tensor:
        x0, labels = self._split_batch(batch)
        generator = torch.Generator().manual_seed(self.hparams.val_seed + batch_idx)
        network = self.ema.module if self.ema is not None else self.network
        k, num_t = self.hparams.val_num_timesteps, self.schedule.num_timesteps
        losses = []
        for i in range(k):
            t = torch.full((x0.shape[0],), int((i + 0.5) * num_t / k), device=x0.device, dtype=torch.long)
            noise = randn(x0.shape, generator, x0.device, x0.dtype)
            losses.append(self._loss(network, x0, noise, t, labels))
        loss = torch.stack(losses).mean()
        self.log("val/loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True,
                 batch_size=x0.shape[0])
        return loss

    # ------------------------------------------------------------------------------------------------
    # Optimization
    # ------------------------------------------------------------------------------------------------
    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """Take the optimizer step, then update the EMA weights (once per step, also with accumulation)."""
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            self.ema.update(self.network)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.network.parameters(), lr=self.hparams.lr,
                                 weight_decay=self.hparams.weight_decay)
