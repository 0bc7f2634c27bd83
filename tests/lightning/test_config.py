"""The Hydra config of the callback mirrors its constructor, and the calibrated defaults are pinned."""

import inspect
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import OmegaConf

from memcallback import MemorizationMonitor

CONFIG = Path(__file__).parents[2] / "configs" / "callbacks" / "memorization.yaml"


def test_every_argument_is_in_the_hydra_config_with_the_same_default() -> None:
    node = OmegaConf.to_container(OmegaConf.load(CONFIG).memorization)
    params = inspect.signature(MemorizationMonitor).parameters
    assert set(node) - {"_target_"} == set(params)
    for name, param in params.items():
        default = list(param.default) if isinstance(param.default, tuple) else param.default
        assert node[name] == default, name
    assert isinstance(instantiate(OmegaConf.load(CONFIG).memorization), MemorizationMonitor)


def test_calibrated_defaults_are_pinned() -> None:
    """Measured on the digits experiments (docs/results.md): change only with new measurements."""
    monitor = MemorizationMonitor()
    assert (monitor.every_n_train_steps, monitor.sigmas, monitor.num_samples) == (250, (0.1,), 64)
    assert (monitor.config.k, monitor.config.score_statistic, monitor.config.solver) == (8, "top_mu", "auto")
    assert monitor.config.flag_threshold == 0.39
    assert (monitor.monitor, monitor.rule.mode, monitor.rule.threshold) == ("memorization/score", "max", 0.1)
    assert (monitor.rule.min_delta, monitor.rule.patience) == (0.05, 1)
