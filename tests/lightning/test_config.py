"""The Hydra config of the callback mirrors its constructor (grouped settings as nested nodes), and the calibrated
defaults are pinned."""

import dataclasses
import inspect
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import OmegaConf

from memcallback import MemorizationMonitor, ProbeConfig, SharpnessConfig, StopConfig
from memcallback.core import CALIBRATED_RULES
from memcallback.core.stopping import StopRule

CONFIG = Path(__file__).parents[2] / "configs" / "callbacks" / "memorization.yaml"


def plain(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


def test_every_argument_is_in_the_hydra_config_with_the_same_default() -> None:
    node = OmegaConf.to_container(OmegaConf.load(CONFIG).memorization)
    params = inspect.signature(MemorizationMonitor).parameters
    assert set(node) - {"_target_"} == set(params)
    for name, param in params.items():
        if dataclasses.is_dataclass(param.default):  # a group: a nested node that instantiates the same dataclass
            group = node[name]
            cls = type(param.default)
            assert group["_target_"].rsplit(".", 1)[-1] == cls.__name__, name
            assert set(group) - {"_target_"} == {f.name for f in dataclasses.fields(cls)}, name
            for field in dataclasses.fields(cls):
                assert group[field.name] == plain(getattr(param.default, field.name)), f"{name}.{field.name}"
        else:
            assert node[name] == plain(param.default), name
    monitor = instantiate(OmegaConf.load(CONFIG).memorization)
    assert isinstance(monitor, MemorizationMonitor)
    assert (monitor.probes, monitor.sharpness, monitor.stop) == (ProbeConfig(), SharpnessConfig(), StopConfig())


def test_nested_overrides_reach_the_groups() -> None:
    cfg = OmegaConf.load(CONFIG)
    cfg.merge_with_dotlist(["memorization.sharpness.k=4", "memorization.stop.patience=2",
                            "memorization.probes.sigmas=[0.05,0.1]"])
    monitor = instantiate(cfg.memorization)
    assert (monitor.sharpness.k, monitor.stop.patience, monitor.probes.sigmas) == (4, 2, (0.05, 0.1))


def test_calibrated_defaults_are_pinned() -> None:
    """Measured on the digits experiments (docs/results.md): change only with new measurements."""
    monitor = MemorizationMonitor()
    assert (monitor.watch.every_n_steps, monitor.probes.sigmas, monitor.probes.num_samples) == (250, (0.1,), 64)
    assert (monitor.sharpness.k, monitor.sharpness.score_statistic, monitor.sharpness.solver) == (4, "mean_mu", "auto")
    assert monitor.sharpness.flag_threshold == 0.25
    assert (monitor.stop.monitor, monitor.stop.threshold, monitor.stop.min_delta) == ("auto", "auto", "auto")
    assert CALIBRATED_RULES["loss_gap"].threshold == 0.25 and CALIBRATED_RULES["loss_gap"].min_delta == 0.0
    assert (CALIBRATED_RULES["score"].threshold, CALIBRATED_RULES["score"].min_delta) == (0.05, 0.05)
    assert (monitor.rule.mode, monitor.rule.threshold, monitor.rule.min_delta, monitor.rule.patience) == (
        "max", 0.05, 0.05, 1)  # before setup: the score's rule, until held-out data make it the loss gap's
    rule = StopRule()  # the rule alone has the monitor's defaults: they are written once, in calibration.py
    assert (rule.mode, rule.threshold, rule.min_delta, rule.patience) == ("max", 0.05, 0.05, 1)
    assert monitor.media == "charts"  # private by default: no image of a sample or of training data
