"""DiffusionModule: protocol, training for every prediction type, validation loss, EMA, checkpoints, errors."""

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from memcallback.app.data import ArrayDataModule
from memcallback.app.models import EMA, DiffusionModule, ResidualMLP, SmallUNet
from memcallback.diffusion import check_model


def _data(num=64, labels=False):
    g = torch.Generator().manual_seed(0)
    x = 0.1 * torch.randn(num, 2, generator=g) + torch.tensor([0.5, -0.5])
    y = torch.arange(num) % 2 if labels else None
    return ArrayDataModule(x, y, batch_size=32, val_fraction=0.25, samples_per_epoch=320)


def _trainer(tmp_path, steps, callbacks=()):
    return pl.Trainer(default_root_dir=tmp_path, max_steps=steps, accelerator="cpu", logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, callbacks=list(callbacks))


class _LossRecorder(pl.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def test_module_implements_the_protocol():
    module = DiffusionModule(ResidualMLP((1, 8, 8), hidden=16, num_blocks=1))
    assert check_model(module) is module
    assert module.data_shape == (1, 8, 8) and module.schedule.num_timesteps == 1000


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_each_prediction_type_trains(tmp_path, prediction_type):
    pl.seed_everything(0)
    module = DiffusionModule(ResidualMLP((2,), hidden=64, num_blocks=2, time_embed_dim=32),
                             num_timesteps=100, prediction_type=prediction_type, lr=3e-3)
    recorder = _LossRecorder()
    _trainer(tmp_path, 100, [recorder]).fit(module, _data())
    losses = torch.tensor(recorder.losses)
    assert len(losses) == 100 and torch.isfinite(losses).all()
    assert losses[-20:].mean() < 0.8 * losses[:20].mean()


def test_targets_match_the_parameterization():
    module = DiffusionModule(ResidualMLP((2,), hidden=8, num_blocks=0), prediction_type="v_prediction")
    x0, noise, t = torch.randn(4, 2), torch.randn(4, 2), torch.tensor([0, 10, 500, 999])
    alpha, sigma = module.schedule.coefficients(t, x0)
    torch.testing.assert_close(module.target(x0, noise, t), alpha * noise - sigma * x0)


def test_conditional_training_drops_labels(tmp_path):
    """With cond_drop_prob=1 every label is dropped, so training never touches the real class embeddings."""
    pl.seed_everything(0)
    network = ResidualMLP((2,), hidden=16, num_blocks=1, num_classes=2)
    before = network.class_embed.table.weight.detach().clone()
    module = DiffusionModule(network, num_timesteps=50, cond_drop_prob=1.0)
    _trainer(tmp_path, 5).fit(module, _data(labels=True))
    after = network.class_embed.table.weight.detach()
    assert torch.equal(after[:2], before[:2]) and not torch.equal(after[2], before[2])


def test_validation_loss_is_deterministic(tmp_path):
    module = DiffusionModule(ResidualMLP((2,), hidden=16, num_blocks=1), num_timesteps=50)
    trainer, data = _trainer(tmp_path, 1), _data()
    first = trainer.validate(module, data, verbose=False)[0]["val/loss"]
    second = trainer.validate(module, data, verbose=False)[0]["val/loss"]
    assert first == second and first > 0


def test_ema_update_math():
    net = nn.Linear(1, 1, bias=False)
    nn.init.constant_(net.weight, 0.0)
    ema = EMA(net, decay=0.9)
    values = [1.0, 2.0, 3.0]
    expected = 0.0
    for n, value in enumerate(values):
        d = min(0.9, (1 + n) / (10 + n))
        assert ema.current_decay() == pytest.approx(d)
        nn.init.constant_(net.weight, value)
        ema.update(net)
        expected = d * expected + (1 - d) * value
    assert float(ema.module.weight) == pytest.approx(expected)
    assert int(ema.num_updates) == 3 and not ema.module.weight.requires_grad


def test_model_output_uses_ema_weights(tmp_path):
    pl.seed_everything(0)
    module = DiffusionModule(ResidualMLP((2,), hidden=16, num_blocks=1), num_timesteps=50, ema_decay=0.5)
    _trainer(tmp_path, 5).fit(module, _data())
    assert int(module.ema.num_updates) == 5
    x, t = torch.randn(4, 2), torch.full((4,), 10)
    with torch.no_grad():
        torch.testing.assert_close(module.model_output(x, t), module.ema.module(x, t))
        assert not torch.allclose(module.model_output(x, t), module.network(x, t))


@pytest.mark.parametrize(
    ("network", "kwargs"),
    [
        (ResidualMLP((2,), hidden=16, num_blocks=1), {"ema_decay": 0.9, "prediction_type": "v_prediction"}),
        (SmallUNet((1, 8, 8), base_channels=8, num_classes=10), {"schedule": "cosine", "num_timesteps": 64}),
    ],
)
def test_checkpoint_round_trip(tmp_path, network, kwargs):
    module = DiffusionModule(network, **kwargs)
    trainer = _trainer(tmp_path, 2)
    shape = network.data_shape
    data = ArrayDataModule(torch.randn(40, *shape), torch.arange(40) % 10, batch_size=8, samples_per_epoch=16)
    trainer.fit(module, data)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    loaded = DiffusionModule.load_from_checkpoint(path)
    assert type(loaded.network) is type(network) and loaded.prediction_type == module.prediction_type
    assert loaded.schedule.num_timesteps == module.schedule.num_timesteps
    x, t = torch.randn(3, *shape), torch.tensor([0, 5, 20])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model_output(x, t), module.model_output(x, t))
        torch.testing.assert_close(loaded.network(x, t), module.network(x, t))


class _PlainNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 2)

    def forward(self, x, t, cond=None):
        return self.linear(x)


def test_checkpoint_of_a_user_network_needs_the_network(tmp_path):
    module = DiffusionModule(_PlainNet(), data_shape=(2,))
    trainer = _trainer(tmp_path, 1)
    trainer.fit(module, _data())
    trainer.save_checkpoint(tmp_path / "user.ckpt")
    with pytest.raises(ValueError, match="load_from_checkpoint"):
        DiffusionModule.load_from_checkpoint(tmp_path / "user.ckpt")
    loaded = DiffusionModule.load_from_checkpoint(tmp_path / "user.ckpt", network=_PlainNet())
    torch.testing.assert_close(loaded.network.linear.weight, module.network.linear.weight)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prediction_type": "score"}, "trains prediction_type"),
        ({"prediction_type": "eps"}, "Unknown prediction_type"),
        ({"lr": 0.0}, "lr > 0"),
        ({"cond_drop_prob": 1.5}, "cond_drop_prob"),
        ({"ema_decay": 1.0}, "ema_decay"),
        ({"schedule": "sqrt"}, "schedule kind"),
        ({"val_num_timesteps": 0}, "val_num_timesteps"),
        ({"network": None}, "needs a network"),
        ({"network": {"_target_": "Linear"}}, "_target_"),
        ({"network": nn.Linear(2, 2)}, "data_shape"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    kwargs = {"network": ResidualMLP((2,), hidden=8, num_blocks=0), **kwargs}
    with pytest.raises(ValueError, match=match):
        DiffusionModule(**kwargs)
