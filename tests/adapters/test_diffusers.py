"""The diffusers adapter: schedule and prediction-type mapping (with small stand-ins, no diffusers needed),
the math attention switch, and, when diffusers is installed, tiny randomly initialised UNets measured by
``analyze`` and monitored by the callback during training."""

from __future__ import annotations

import math
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from tiny_training import make_trainer
from torch import Tensor, nn

from memcallback import GovernorConfig, MemorizationMonitor, NoiseSchedule, ProbeConfig, SharpnessConfig, analyze
from memcallback.adapters import (
    DiffusersModel,
    DiffusersProtocolMixin,
    math_attention,
    prediction_type_from_diffusers,
    schedule_from_diffusers,
)
from memcallback.app.data import DigitsDataModule
from memcallback.diffusion import check_model, predict_epsilon, score

SDPA_FLAGS = (torch.backends.cuda.flash_sdp_enabled, torch.backends.cuda.mem_efficient_sdp_enabled,
              torch.backends.cuda.math_sdp_enabled, torch.backends.cuda.cudnn_sdp_enabled)


def sdpa_flags() -> tuple[bool, ...]:
    """Which scaled-dot-product-attention backends are enabled: (flash, memory-efficient, math, cuDNN)."""
    return tuple(flag() for flag in SDPA_FLAGS)


def ddpm_alphas_cumprod(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """DDPM's closed form: ``abar_t = prod_{s<=t} (1 - beta_s)``, betas linear (Ho et al. 2020)."""
    return torch.cumprod(1 - torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64), dim=0)


def fake_scheduler(prediction_type: str = "epsilon", num_timesteps: int = 100) -> SimpleNamespace:
    """The two members of a diffusers scheduler the adapter reads."""
    return SimpleNamespace(alphas_cumprod=ddpm_alphas_cumprod(num_timesteps).float(),
                           config={"prediction_type": prediction_type})


class GaussianUNet(nn.Module):
    """The exact denoiser of data ``x_0 ~ N(0, s^2 I)``, answering in a diffusers UNet's calling convention.

    With ``var_t = alpha_t^2 s^2 + sigma_t^2``: ``E[x_0 | x_t] = alpha_t s^2 x_t / var_t``,
    ``E[eps | x_t] = sigma_t x_t / var_t``, ``v = alpha_t eps - sigma_t x_0`` (diffusers' ``get_velocity``),
    and the true score is ``-x_t / var_t``.
    """

    def __init__(self, prediction_type: str, alphas_cumprod: Tensor, s: float = 0.5, shape=(1, 2, 2)):
        super().__init__()
        self.prediction_type, self.abar, self.s = prediction_type, alphas_cumprod.double(), s
        self.config = SimpleNamespace(in_channels=shape[0], sample_size=shape[1:])
        self.flags_seen: list[tuple[bool, ...]] = []

    def variance(self, t: Tensor) -> Tensor:
        alpha_sq = self.abar[t].view(-1, 1, 1, 1)
        return alpha_sq * self.s**2 + (1 - alpha_sq)

    def forward(self, sample: Tensor, timestep: Tensor, return_dict: bool = True) -> tuple[Tensor]:
        self.flags_seen.append(sdpa_flags())
        alpha = self.abar[timestep].sqrt().view(-1, 1, 1, 1)
        sigma = (1 - self.abar[timestep]).sqrt().view(-1, 1, 1, 1)
        var = alpha**2 * self.s**2 + sigma**2
        x0, eps = alpha * self.s**2 * sample / var, sigma * sample / var
        target = {"epsilon": eps, "sample": x0, "v_prediction": alpha * eps - sigma * x0}[self.prediction_type]
        return (target.to(sample.dtype),)


# --------------------------------------------------------------------------------------------------
# Mapping (no diffusers needed)
# --------------------------------------------------------------------------------------------------
def test_schedule_from_a_ddpm_style_scheduler_is_ddpms_closed_form():
    schedule = schedule_from_diffusers(fake_scheduler(num_timesteps=1000))
    reference = NoiseSchedule.linear(1000, 1e-4, 0.02)
    assert schedule.num_timesteps == 1000
    torch.testing.assert_close(schedule.alphas_cumprod, reference.alphas_cumprod, rtol=1e-6, atol=0)
    t = torch.tensor([0, 499, 999])
    torch.testing.assert_close(schedule.sigma(t, torch.float64) ** 2 + schedule.alpha(t, torch.float64) ** 2,
                               torch.ones(3, dtype=torch.float64))


def test_zero_terminal_snr_is_kept_finite():
    scheduler = fake_scheduler()
    scheduler.alphas_cumprod[-1] = 0.0
    schedule = schedule_from_diffusers(scheduler)
    assert schedule.alphas_cumprod[-1].item() == 2.0**-24
    assert math.isfinite(1 / schedule.alpha(99).item())


def test_schedulers_that_cannot_be_mapped_are_refused_clearly():
    with pytest.raises(TypeError, match=r"no `alphas_cumprod`.*flow-matching"):
        schedule_from_diffusers(SimpleNamespace(sigmas=torch.linspace(1, 0, 10)))
    with pytest.raises(ValueError, match=r"not a usable schedule.*decreasing"):
        schedule_from_diffusers(SimpleNamespace(alphas_cumprod=torch.tensor([0.5, 0.9])))
    with pytest.raises(ValueError, match=r"flow_prediction.*cannot be mapped"):
        prediction_type_from_diffusers(fake_scheduler("flow_prediction"))
    with pytest.raises(ValueError, match=r"None.*cannot be mapped"):
        prediction_type_from_diffusers(SimpleNamespace())


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_every_prediction_type_gives_the_exact_score_of_gaussian_data(prediction_type):
    scheduler = fake_scheduler(prediction_type)
    unet = GaussianUNet(prediction_type, scheduler.alphas_cumprod)
    model = check_model(DiffusersModel(unet, scheduler))
    assert model.prediction_type == prediction_type and model.data_shape == (1, 2, 2)
    x = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for t in (1, 30, 90):
        expected = -x / unet.variance(torch.full((3,), t))
        torch.testing.assert_close(score(model, x, t), expected, rtol=1e-9, atol=1e-9)


def test_v_prediction_through_analyze_gives_the_analytic_spectrum():
    """The Hessian of Gaussian data is ``-I / var_t``: every ``mu = 1 - sigma_t^2 / var_t = alpha_t^2 s^2 / var_t``."""
    scheduler = fake_scheduler("v_prediction")
    model = DiffusersModel(GaussianUNet("v_prediction", scheduler.alphas_cumprod), scheduler)
    report = analyze(model, num_samples=3, timesteps=(20,), num_sampling_steps=5,
                     config=SharpnessConfig(k=2, solver="dense"))
    alpha_sq = scheduler.alphas_cumprod.double()[20]
    expected = alpha_sq * 0.25 / (alpha_sq * 0.25 + 1 - alpha_sq)
    torch.testing.assert_close(report.primary.mu, torch.full((3, 2), expected.item()), rtol=0, atol=1e-4)


def test_math_attention_switches_backends_and_restores_them():
    before = sdpa_flags()
    with math_attention():
        assert sdpa_flags() == (False, False, True, False)
        with math_attention():
            pass
        assert sdpa_flags() == (False, False, True, False)
    assert sdpa_flags() == before
    torch.backends.cuda.enable_flash_sdp(False)  # a user's own choice survives, also through an exception
    try:
        with pytest.raises(RuntimeError, match="inside"), math_attention():
            raise RuntimeError("inside")
        assert sdpa_flags() == (False, *before[1:])
    finally:
        torch.backends.cuda.enable_flash_sdp(before[0])
    assert sdpa_flags() == before


def test_model_output_runs_on_math_attention_only():
    scheduler = fake_scheduler()
    unet = GaussianUNet("epsilon", scheduler.alphas_cumprod)
    model = DiffusersModel(unet, scheduler)
    before = sdpa_flags()
    model.model_output(torch.zeros(2, 1, 2, 2), torch.tensor([3, 4]))
    assert unet.flags_seen == [(False, False, True, False)]
    assert sdpa_flags() == before


class ConditionalStandIn(nn.Module):
    """Records the condition a ``UNet2DConditionModel``-like forward receives."""

    config = SimpleNamespace(in_channels=1, sample_size=2)

    def __init__(self):
        super().__init__()
        self.received: list[Tensor] = []

    def forward(self, sample: Tensor, timestep: Tensor, encoder_hidden_states: Tensor, return_dict: bool = True):
        self.received.append(encoder_hidden_states)
        return (torch.zeros_like(sample),)


def test_conditions_and_the_null_condition_reach_encoder_hidden_states():
    unet = ConditionalStandIn()
    null = torch.arange(6.0).view(3, 2)
    model = DiffusersModel(unet, fake_scheduler(), null_cond=null)
    x, t = torch.zeros(4, 1, 2, 2), torch.full((4,), 5)
    model.model_output(x, t)
    model.model_output(x, t, cond=torch.ones(4, 3, 2))
    assert unet.received[0].shape == (4, 3, 2) and torch.equal(unet.received[0][2], null)
    assert torch.equal(unet.received[1], torch.ones(4, 3, 2))
    assert "null_cond" not in model.state_dict()
    with pytest.raises(ValueError, match=r"needs encoder_hidden_states.*null_cond"):
        DiffusersModel(unet, fake_scheduler()).model_output(x, t)


def test_an_unconditional_unet_refuses_a_condition():
    scheduler = fake_scheduler()
    model = DiffusersModel(GaussianUNet("epsilon", scheduler.alphas_cumprod), scheduler)
    with pytest.raises(ValueError, match="takes no condition"):
        model.model_output(torch.zeros(2, 1, 2, 2), torch.tensor([1, 2]), cond=torch.tensor([0, 1]))


def test_mixin_reads_unet_and_scheduler_and_says_what_is_missing():
    class Holder(DiffusersProtocolMixin, nn.Module):
        def __init__(self, scheduler=None):
            super().__init__()
            self.unet = GaussianUNet("sample", ddpm_alphas_cumprod(100))
            self.noise_scheduler = scheduler

    holder = check_model(Holder(fake_scheduler("sample")))
    assert holder.data_shape == (1, 2, 2) and holder.prediction_type == "sample"
    assert holder.schedule is holder.schedule  # built once per scheduler
    holder.noise_scheduler = fake_scheduler("epsilon", num_timesteps=50)
    assert holder.schedule.num_timesteps == 50 and holder.prediction_type == "epsilon"
    with pytest.raises(TypeError, match=r"no `self\.noise_scheduler`"):
        check_model(Holder())


def test_data_shape_must_be_given_when_the_config_lacks_it():
    unet = GaussianUNet("epsilon", ddpm_alphas_cumprod(100))
    unet.config = SimpleNamespace(in_channels=4, sample_size=None)
    with pytest.raises(ValueError, match="data_shape="):
        DiffusersModel(unet, fake_scheduler())
    assert DiffusersModel(unet, fake_scheduler(), data_shape=[1, 2, 2]).data_shape == (1, 2, 2)


# --------------------------------------------------------------------------------------------------
# Real diffusers UNets (skipped without diffusers)
# --------------------------------------------------------------------------------------------------
def tiny_unet() -> nn.Module:
    """A randomly initialised 8x8 UNet2DModel with self-attention in its low-resolution blocks (~45k weights)."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4, attention_head_dim=8,
    )


@pytest.mark.parametrize("name", ["DDPMScheduler", "DDIMScheduler"])
def test_real_schedulers_map_to_ddpms_closed_form(name):
    diffusers = pytest.importorskip("diffusers")
    scheduler = getattr(diffusers, name)(num_train_timesteps=1000, prediction_type="v_prediction")
    schedule = schedule_from_diffusers(scheduler)
    torch.testing.assert_close(schedule.alphas_cumprod, ddpm_alphas_cumprod(1000), rtol=1e-5, atol=0)
    assert prediction_type_from_diffusers(scheduler) == "v_prediction"


def test_diffusers_velocity_target_converts_back_to_its_noise():
    """A network that predicts diffusers' own ``get_velocity`` target exactly recovers the noise."""
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=100, prediction_type="v_prediction")
    generator = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 1, 8, 8, generator=generator), torch.randn(3, 1, 8, 8, generator=generator)
    t = torch.tensor([2, 40, 95])
    x_t, v = scheduler.add_noise(x0, noise, t), scheduler.get_velocity(x0, noise, t)

    class Oracle(nn.Module):
        config = SimpleNamespace(in_channels=1, sample_size=8)

        def forward(self, sample, timestep, return_dict=True):
            return (v,)

    eps = predict_epsilon(DiffusersModel(Oracle(), scheduler), x_t, t)
    torch.testing.assert_close(eps, noise, rtol=1e-4, atol=1e-4)


def test_dense_and_lanczos_agree_on_a_unet_with_attention():
    diffusers = pytest.importorskip("diffusers")
    model = DiffusersModel(tiny_unet(), diffusers.DDPMScheduler(num_train_timesteps=100))
    common = dict(num_samples=2, timesteps=(10,), num_sampling_steps=5)
    dense = analyze(model, **common, config=SharpnessConfig(k=3, solver="dense")).primary
    lanczos = analyze(model, **common, config=SharpnessConfig(k=3, solver="lanczos", krylov_steps=None,
                                                                lanczos_iters=48, tol=1e-6)).primary
    assert bool(lanczos.converged.all())
    torch.testing.assert_close(lanczos.mu, dense.mu, rtol=0, atol=1e-3)
    assert torch.isfinite(dense.memorization_score).all()


def test_conditional_unet_is_measured_with_its_null_condition():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8, norm_num_groups=4, attention_head_dim=4,
    )
    model = DiffusersModel(unet, diffusers.DDIMScheduler(num_train_timesteps=100), null_cond=torch.zeros(3, 8))
    stats = analyze(model, num_samples=2, timesteps=(10,), num_sampling_steps=3,
                    config=SharpnessConfig(k=2, solver="lanczos", krylov_steps=8, trace_probes=2,
                                                          asymmetry_probes=1)).primary
    assert torch.isfinite(stats.mu).all() and torch.isfinite(stats.memorization_score).all()


class LitUNet(DiffusersProtocolMixin, pl.LightningModule):
    """A diffusers training loop in Lightning, as a user writes it; the mixin makes it monitorable."""

    def __init__(self, prediction_type: str = "v_prediction"):
        super().__init__()
        diffusers = pytest.importorskip("diffusers")
        self.unet = tiny_unet()
        self.noise_scheduler = diffusers.DDPMScheduler(num_train_timesteps=100, prediction_type=prediction_type)

    def training_step(self, batch, batch_idx):
        x0 = batch[0]
        noise = torch.randn_like(x0)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (x0.shape[0],), device=x0.device)
        x_t = self.noise_scheduler.add_noise(x0, noise, t)
        target = self.noise_scheduler.get_velocity(x0, noise, t)
        return F.mse_loss(self.unet(x_t, t).sample, target)

    def configure_optimizers(self):
        return torch.optim.Adam(self.unet.parameters(), lr=1e-3)


def test_callback_monitors_a_diffusers_unet_while_it_trains(tmp_path):
    module = LitUNet()
    monitor = MemorizationMonitor(probes=ProbeConfig(num_samples=4, num_sampling_steps=5),
                                  sharpness=SharpnessConfig(k=2), every_n_train_steps=2, save_plot=False,
                                  governor=GovernorConfig(max_overhead=None))  # every check full
    data = DigitsDataModule(num_train=16, batch_size=16, samples_per_epoch=64)
    make_trainer(tmp_path, [monitor], max_steps=4).fit(module, datamodule=data)
    assert len(monitor.history) == 3  # at train start, after steps 2 and 4
    assert all(math.isfinite(entry["score"]) for entry in monitor.history)
    assert monitor.failures == 0
    assert module.unet.training  # the measurement restored train mode
