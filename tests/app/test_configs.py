"""Hydra configs: every experiment and group option composes, instantiates where it can, and typos fail."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.utils import instantiate
from omegaconf import OmegaConf

CONFIG_DIR = Path(__file__).parents[2] / "configs"
GROUPS = ("data", "model", "trainer", "logger", "callbacks", "paths", "experiment")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def make_cfg(tmp_path, overrides=()):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose("train", overrides=list(overrides))
    cfg.paths.output_dir = str(tmp_path)
    return cfg


def test_every_group_has_options():
    assert {"digits", "patches", "toy", "image_folder", "mnist", "cifar10"} <= set(options("data"))
    assert {"mlp", "unet"} <= set(options("model"))
    assert {"cpu", "gpu", "ddp"} <= set(options("trainer"))
    assert {"wandb", "csv", "tensorboard", "none"} <= set(options("logger"))
    assert {"default", "none"} <= set(options("callbacks"))
    assert {"digits_memorize", "digits_generalize", "toy_memorize", "patches_memorize", "patches_generalize"} <= set(
        options("experiment")
    )


def test_default_is_digits_memorize_with_offline_wandb(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = make_cfg(tmp_path)
    assert cfg.task_name == "digits_memorize" and cfg.data.num_train == 16
    assert cfg.logger.wandb.mode == "offline" and cfg.logger.wandb.save_dir == str(tmp_path)
    assert cfg.callbacks.model_checkpoint.dirpath == str(tmp_path / "checkpoints")


@pytest.mark.parametrize("experiment", options("experiment"))
def test_experiments_compose_and_instantiate(tmp_path, experiment):
    cfg = make_cfg(tmp_path, [f"experiment={experiment}"])
    OmegaConf.resolve(cfg)
    datamodule = instantiate(cfg.data)
    cfg.model.network.data_shape = list(datamodule.data_shape)
    model = instantiate(cfg.model)
    assert model.data_shape == datamodule.data_shape
    assert cfg.trainer.max_steps > 0


@pytest.mark.parametrize(("name", "num_train"), [("digits", 16), ("patches", 32)])
def test_memorize_and_generalize_differ_only_in_the_training_set(tmp_path, name, num_train):
    mem = make_cfg(tmp_path, [f"experiment={name}_memorize"])
    gen = make_cfg(tmp_path, [f"experiment={name}_generalize"])
    assert (mem.data.num_train, gen.data.num_train) == (num_train, None)
    mem.data.num_train = None
    for key in ("data", "model", "trainer", "torch_threads"):
        assert mem[key] == gen[key]


def test_a_data_override_gets_that_data_sets_own_settings(tmp_path):
    """The default experiment (the digits demo) applies only to data=digits, not to another data choice."""
    for option in ("toy", "patches", "digits"):
        cfg = make_cfg(tmp_path, [f"data={option}"])
        own = OmegaConf.load(CONFIG_DIR / "data" / f"{option}.yaml")
        if option == "digits":  # the demo: experiment=digits_memorize
            assert cfg == make_cfg(tmp_path, ["experiment=digits_memorize"]) and cfg.data.num_train == 16
        else:
            assert cfg.task_name == "train" and cfg.torch_threads is None
            assert {k: cfg.data[k] for k in own if k != "seed"} == {k: own[k] for k in own if k != "seed"}
    assert make_cfg(tmp_path, ["experiment=toy_memorize"]).data.num_train is None


@pytest.mark.parametrize("group", [g for g in GROUPS if g != "experiment"])
def test_every_group_option_composes(tmp_path, group):
    for option in options(group):
        cfg = make_cfg(tmp_path, [f"{group}={option}"])
        OmegaConf.resolve(cfg)  # every interpolation resolves (paths.output_dir is set)


@pytest.mark.parametrize(("option", "shape"), [("digits", (1, 8, 8)), ("toy", (2,)), ("patches", (3, 16, 16)),
                                             ("faces", (1, 24, 24)), ("textures", (3, 16, 16))])
def test_offline_data_options_instantiate(tmp_path, option, shape):
    cfg = make_cfg(tmp_path, ["~experiment", f"data={option}"])
    assert instantiate(cfg.data).data_shape == shape


@pytest.mark.parametrize("option", ["mlp", "unet"])
def test_model_options_instantiate(tmp_path, option):
    cfg = make_cfg(tmp_path, [f"model={option}", "model.network.data_shape=[1,8,8]"])
    assert instantiate(cfg.model).data_shape == (1, 8, 8)


@pytest.mark.parametrize("loggers", ["csv", "tensorboard", "wandb", "[csv,tensorboard]", "none"])
def test_logger_options_instantiate(tmp_path, loggers):
    from memcallback.app.train import instantiate_group

    cfg = make_cfg(tmp_path, [f"logger={loggers}"])
    expected = 0 if loggers == "none" else loggers.count(",") + 1
    assert len(instantiate_group(cfg.logger)) == expected


def test_callbacks_and_trainer_instantiate(tmp_path):
    from memcallback.app.train import instantiate_group

    cfg = make_cfg(tmp_path, ["trainer.max_steps=7", "callbacks.model_checkpoint.every_n_train_steps=3"])
    callbacks = instantiate_group(cfg.callbacks)
    assert "ModelCheckpoint" in [type(c).__name__ for c in callbacks]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=False)
    assert trainer.max_steps == 7 and trainer.checkpoint_callback._every_n_train_steps == 3
    assert instantiate_group(make_cfg(tmp_path, ["callbacks=none"]).callbacks) == []
    remaining = instantiate_group(make_cfg(tmp_path, ["~callbacks.model_checkpoint"]).callbacks)
    assert [c.monitor for c in remaining if type(c).__name__ == "ModelCheckpoint"] == [None]  # last_checkpoint
    names = [type(c).__name__ for c in instantiate_group(make_cfg(tmp_path, []).callbacks)]
    assert names == ["ModelCheckpoint", "ModelCheckpoint", "MemorizationMonitor"]


def test_ddp_trainer_config(tmp_path):
    cfg = make_cfg(tmp_path, ["trainer=ddp"])
    assert (cfg.trainer.strategy, cfg.trainer.devices, cfg.trainer.accelerator) == ("ddp", 2, "auto")


@pytest.mark.parametrize(
    ("override", "error"),
    [
        ("trainer.max_stepz=10", ConfigCompositionException),
        ("model.network.hiden=64", ConfigCompositionException),
        ("data.num_trian=16", ConfigCompositionException),
        ("data=nope", MissingConfigException),
        ("experiment=nope", MissingConfigException),
    ],
)
def test_unknown_keys_and_options_fail(tmp_path, override, error):
    with pytest.raises(error):
        make_cfg(tmp_path, [override])


@pytest.mark.parametrize(
    ("overrides", "media"),
    [([], "images"), (["data=toy"], "images"), (["data=patches"], "images"),
     (["experiment=patches_memorize"], "images"), (["data=image_folder", "data.root=/nonexistent"], "charts")],
)
def test_images_are_shown_for_public_data_only(tmp_path, overrides, media):
    """The reference app opts into image media for its public data sets; a user's own folder keeps the default."""
    assert make_cfg(tmp_path, overrides).callbacks.memorization.media == media
