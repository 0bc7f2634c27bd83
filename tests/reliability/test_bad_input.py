"""Issue 6, item 5: bad input gives one clear message naming the argument, at construction or at setup.

Every constructor argument, every field of its grouped settings (``probes``, ``sharpness``, ``stop``,
``conditions``) and every Hydra override ``callbacks.memorization.<arg>=...`` / ``...<group>.<field>=...`` is
tried with values drawn by hypothesis (wrong types, out-of-range numbers, NaN/inf, strings, lists, mappings,
booleans for counts). An independent specification (``ACCEPTS``) says which values are valid: those must
construct and be kept (never silently replaced), all others must raise ``ValueError``/``TypeError`` naming the
argument, from memcallback's own code (no deep torch trace). Settings that are only wrong for a given model or
data set, a model without the protocol and data of the wrong shape fail at setup, before the first training step.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lightning.pytorch.demos.boring_classes import BoringModel
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from reliability_helpers import ROOT, TINY_APP
from tiny_training import make_data, make_module, make_trainer

import memcallback
from memcallback import ConditionalConfig, GovernorConfig, MemorizationMonitor, ProbeConfig, SharpnessConfig, StopConfig
from memcallback.app.data import ToyMixtureDataModule
from memcallback.app.models import DiffusionModule, ResidualMLP
from memcallback.app.train import run

PACKAGE = Path(memcallback.__file__).parent
#: the grouped settings: constructor argument -> (dataclass, fields it needs besides the one tried)
GROUPS: dict[str, tuple[type, dict[str, Any]]] = {
    "probes": (ProbeConfig, {}), "sharpness": (SharpnessConfig, {}), "stop": (StopConfig, {}),
    "conditions": (ConditionalConfig, {"labels": [0]}), "governor": (GovernorConfig, {}),
}


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def is_list(v: Any) -> bool:
    return isinstance(v, (list, tuple))


def count(minimum: int) -> Callable[[Any], bool]:
    return lambda v: is_int(v) and v >= minimum


def flag(v: Any) -> bool:
    return isinstance(v, bool)


def one_of(*options: str) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and v in options


def never(v: Any) -> bool:
    return False


#: What each argument and group field accepts, written from the docs (not from the code), every other argument
#: at its default. A group itself accepts only its dataclass (never drawn here: every drawn value is invalid).
ACCEPTS: dict[str, Callable[[Any], bool]] = {
    "every_n_train_steps": count(1),  # None as well, but then every_n_epochs (default None) must be set
    "every_n_epochs": count(1),  # tried with every_n_train_steps=None
    "check_on_train_start": flag,
    "probes": never,
    "probes.num_samples": count(1),
    "probes.num_sampling_steps": count(1),
    "probes.sigmas": lambda v: is_list(v) and len(v) > 0 and all(is_real(s) and 0 < s < 1 for s in v),
    "probes.timesteps": lambda v: is_list(v) and all(is_int(t) and t >= 0 for t in v),
    "probes.seed": lambda v: is_int(v) and 0 <= v < 2**63,
    "probes.reference_images": count(0),
    "probes.loss_gap_images": count(0),
    "probes.null_images": lambda v: is_int(v) and (v == 0 or v >= 99),  # a conformal threshold at flag_fpr 0.01
    "probes.copy_null_images": count(0),
    "probes.every_n_checks": count(1),
    "sharpness": never,
    "sharpness.k": lambda v: is_int(v) and 1 <= v < 26,  # below krylov_steps (default 26)
    "sharpness.solver": one_of("auto", "dense", "lanczos", "power"),
    "sharpness.krylov_steps": lambda v: v is None or (is_int(v) and v > 4),  # larger than k (default 4)
    "sharpness.krylov_product": one_of("S", "JT"),  # JT: fine with the defaults (auto, a budget, hutchinson)
    "sharpness.lanczos_iters": lambda v: v is None or (is_int(v) and v > 4),  # larger than k (default 4)
    "sharpness.tol": lambda v: is_real(v) and 0 < v < 1,
    "sharpness.trace_probes": count(2),
    "sharpness.trace_estimator": one_of("hutchinson", "deflated"),  # deflated: fine with the default auto + budget
    "sharpness.asymmetry_probes": count(0),
    "sharpness.min_eigenvalue": flag,
    "sharpness.jvp": one_of("double_backward", "forward"),
    "sharpness.score_statistic": one_of("mean_mu", "top_mu", "effective_dim", "flat_fraction"),
    "sharpness.flag_threshold": lambda v: is_real(v) and 0 <= v <= 1,
    "sharpness.flag_fpr": lambda v: is_real(v) and 0 < v < 1,  # no null images by default: any rate is accepted
    "sharpness.chunk_size": lambda v: v is None or count(1)(v),
    "stop": never,
    # threshold and min_delta 'auto' (the defaults): 'auto' or a monitor with calibrated constants
    "stop.monitor": one_of("auto", "memorization/score", "memorization/loss_gap"),
    "stop.mode": one_of("max"),  # monitor 'auto' (the default) stops on a rise; a named monitor may take 'min'
    "stop.threshold": one_of("auto"),  # with monitor 'auto' (the default), a number needs a named monitor
    "stop.min_delta": one_of("auto"),
    "stop.patience": count(1),
    "stop.stop_training": flag,
    "stop.restore_safe_weights": flag,
    "conditions": lambda v: v is None,
    "conditions.labels": lambda v: is_list(v) and len(v) > 0 and all(is_int(c) and c >= 0 for c in v),
    "conditions.num_samples_per_cond": count(1),
    "conditions.num_generations": count(1),
    "ground_truth": flag,
    "time_budget_s": lambda v: v is None or (is_real(v) and math.isfinite(v) and v > 0),
    "governor": never,
    "governor.max_overhead": lambda v: v is None or (is_real(v) and 0 < v < 1),
    "governor.min_fraction": lambda v: is_real(v) and 0 < v <= 1,
    "media": one_of("none", "charts", "images"),
    "num_media_samples": count(1),
    "save_plot": flag,
    "prefix": lambda v: isinstance(v, str) and len(v) > 0,  # the default monitor 'auto' takes any prefix
    "weights": one_of("ema", "raw"),
}

WORDS = ["auto", "dense", "lanczos", "power", "eig", "mean_mu", "top_mu", "effective_dim", "flat_fraction", "max",
         "min", "up", "", "memorization/", "memorization/score", "memorization/mu_max", "val/loss", "mem",
         "memorization/loss_gap", "Dense", "true", "0.1", "none", "charts", "images", "hutchinson", "deflated",
         "forward", "double_backward", "S", "JT", "ema", "raw"]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 300), st.integers(2**62, 2**64), st.floats(),
    st.floats(-0.5, 1.5), st.sampled_from(WORDS), st.text("abz/_.0", max_size=4),
)
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3), st.lists(SCALARS, max_size=2).map(tuple),
                   st.dictionaries(st.sampled_from(["a", "k"]), st.integers(0, 3), max_size=1))


def build(name: str, value: Any) -> MemorizationMonitor:
    """The monitor with one argument (``name``) or one group field (``group.field``) set to ``value``."""
    if "." in name:
        group, field = name.split(".")
        cls, needs = GROUPS[group]
        return MemorizationMonitor(**{group: cls(**(needs | {field: value}))})
    kwargs = {name: value}
    if name == "every_n_epochs":
        kwargs["every_n_train_steps"] = None
    return MemorizationMonitor(**kwargs)


#: where the monitor keeps the top-level arguments it hands to its core under the core's names
KEPT_BY_THE_CORE = {"every_n_train_steps": "every_n_steps", "every_n_epochs": "every_n_epochs",
                    "check_on_train_start": "check_at_start", "time_budget_s": "time_budget_s", "prefix": "prefix"}


def stored(monitor: MemorizationMonitor, name: str) -> Any:
    """Where the monitor keeps an argument (a group field in its group, the schedule in its core)."""
    if "." in name:
        group, field = name.split(".")
        return getattr(getattr(monitor, group), field)
    if name in KEPT_BY_THE_CORE:
        return getattr(monitor.watch, KEPT_BY_THE_CORE[name])
    return getattr(monitor, name)


def assert_clear_error(error: BaseException, name: str) -> None:
    """One ValueError/TypeError that names the argument, raised by memcallback itself."""
    name = name.split(".")[-1]
    assert isinstance(error, (ValueError, TypeError)), repr(error)
    assert name in str(error), f"{name} not named in: {error}"
    origin = Path(traceback.extract_tb(error.__traceback__)[-1].filename)
    assert PACKAGE in origin.parents, f"raised from {origin}, not from memcallback"


def same(a: Any, b: Any) -> bool:
    """Equality up to int/float conversion, with lists as tuples."""
    if is_list(a) and is_list(b):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if is_real(a) and is_real(b):
        return float(a) == float(b)
    return a == b


def test_the_specification_covers_every_argument_and_group_field() -> None:
    params = inspect.signature(MemorizationMonitor).parameters
    fields = {f"{group}.{f.name}" for group, (cls, _) in GROUPS.items() for f in dataclasses.fields(cls)}
    assert set(ACCEPTS) == set(params) | fields


@settings(max_examples=800, deadline=None)
@given(name=st.sampled_from(sorted(ACCEPTS)), value=VALUES)
def test_every_constructor_argument_is_validated(name: str, value: Any) -> None:
    if ACCEPTS[name](value):
        monitor = build(name, value)
        assert same(stored(monitor, name), value)  # kept as given: never a silent substitute
    else:
        with pytest.raises((ValueError, TypeError)) as info:
            build(name, value)
        assert_clear_error(info.value, name)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: MemorizationMonitor(every_n_train_steps=None), "exactly one"),
        (lambda: MemorizationMonitor(every_n_epochs=2), "exactly one"),
        (lambda: ProbeConfig(sigmas=[], timesteps=[]), "at least one"),
        (lambda: SharpnessConfig(k=8, lanczos_iters=8), "lanczos_iters"),
        (lambda: MemorizationMonitor(prefix="mem/", stop=StopConfig(monitor="memorization/score")),
         "monitor='memorization/score' is invalid.*prefix='mem/'"),
        (lambda: MemorizationMonitor(stop=StopConfig(monitor="memorization/mu_max")),
         "threshold='auto' has no calibrated value"),
        (lambda: StopConfig(threshold=0.3), "monitor='auto' picks the monitor"),
        (lambda: MemorizationMonitor(probes=ProbeConfig(null_images=20)), "null_images=20 is too few"),
        (lambda: MemorizationMonitor(stop=StopConfig(monitor="val/loss")), "monitor"),
        (lambda: MemorizationMonitor(every_n_train_steps=0), "every_n_train_steps"),
        (lambda: ProbeConfig(num_samples=0), "num_samples"),
        (lambda: ProbeConfig(sigmas=[1.5]), "sigmas"),
        (lambda: StopConfig(mode="up"), "mode"),
        (lambda: StopConfig(patience=0), "patience"),
        (lambda: SharpnessConfig(k=0), "k=0"),
        (lambda: SharpnessConfig(solver="eig"), "solver"),
        (lambda: MemorizationMonitor(time_budget_s=-1), "time_budget_s"),
        (lambda: ProbeConfig(seed=None), "seed"),
        (lambda: MemorizationMonitor(media="all"), "media"),
        (lambda: MemorizationMonitor(probes={"num_samples": 8}), "probes"),
        (lambda: MemorizationMonitor(conditions=[0, 9]), "conditions"),
    ],
)
def test_incompatible_combinations_and_examples(make: Callable[[], object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def hydra_literal(value: Any) -> str:
    """``value`` written the way a user types it on the command line (``key=<literal>``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return f"'{value}'"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_literal(v)}" for k, v in value.items()) + "}"
    return "[" + ",".join(hydra_literal(v) for v in value) + "]"


@pytest.fixture(scope="module")
def hydra_configs():
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        yield


@pytest.fixture(scope="module")
def callbacks_node(hydra_configs) -> dict:
    return OmegaConf.to_container(compose("train", overrides=["logger=none"]).callbacks)


PARSER = OverridesParser.create()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(sorted(ACCEPTS)), value=VALUES)
def test_every_hydra_override_is_validated(callbacks_node, name: str, value: Any) -> None:
    """Each override goes through Hydra's command-line grammar and is applied the way ``compose`` applies a
    ``key=value`` override (``OmegaConf.update``) to the composed ``callbacks`` group; composing anew per
    example costs 0.1 s, so :func:`test_a_bad_override_fails_before_training` does that end to end once."""
    cfg = OmegaConf.create({"callbacks": callbacks_node})
    OmegaConf.set_struct(cfg, True)  # as composed: an override cannot add keys
    if name.startswith("conditions."):  # a conditional run first sets the group (null by default)
        fields = {k: list(v) if isinstance(v, tuple) else v
                  for k, v in dataclasses.asdict(ConditionalConfig([0])).items()}
        cfg.callbacks.memorization.conditions = {"_target_": "memcallback.ConditionalConfig", **fields}
    kwargs = {name: value} | ({"every_n_train_steps": None} if name == "every_n_epochs" else {})
    overrides = [f"callbacks.memorization.{k}={hydra_literal(v)}" for k, v in kwargs.items()]
    try:
        for override in PARSER.parse_overrides(overrides):
            OmegaConf.update(cfg, override.key_or_group, override.value(), merge=True)
    except OmegaConfBaseException as err:  # e.g. a mapping onto a list: Hydra says "Could not override '<key>'"
        assert not ACCEPTS[name](value) and f"callbacks.memorization.{name}" in str(err)
        return
    if ACCEPTS[name](value):
        assert same(stored(instantiate(cfg.callbacks.memorization), name), value)
    elif name in GROUPS and isinstance(value, dict) and value and name != "conditions":
        # a mapping is merged into the group: it sets those fields (an unknown key failed to merge above)
        fields = {f"{name}.{key}": v for key, v in value.items()}
        invalid = [field for field, v in fields.items() if not ACCEPTS[field](v)]
        if not invalid:
            monitor = instantiate(cfg.callbacks.memorization)
            assert all(same(stored(monitor, field), v) for field, v in fields.items())
        else:
            with pytest.raises(InstantiationException) as info:
                instantiate(cfg.callbacks.memorization)
            assert_clear_error(info.value.__cause__, invalid[0])
    elif name in GROUPS and value == {} and name != "conditions":  # merging nothing into a group changes nothing
        cls, needs = GROUPS[name]
        assert stored(instantiate(cfg.callbacks.memorization), name) == cls(**needs)
    elif name in GROUPS:  # the group replaced by a scalar or a list (a mapping is merged into it)
        with pytest.raises(InstantiationException) as info:
            instantiate(cfg.callbacks.memorization)
        assert_clear_error(info.value.__cause__, name)
    else:
        with pytest.raises(InstantiationException) as info:
            instantiate(cfg.callbacks.memorization)
        assert_clear_error(info.value.__cause__, name)
        assert name.split(".")[-1] in str(info.value)  # Hydra's own message carries the argument's name too


def test_a_bad_override_fails_before_training(hydra_configs, tmp_path) -> None:
    cfg = compose("train", overrides=["logger=none", "trainer.max_steps=2", *TINY_APP,
                                      "callbacks.memorization.sharpness.k=2.5"])
    with pytest.raises(InstantiationException, match=r"k=2\.5 is invalid: expected an int >= 1"):
        run(cfg, output_dir=tmp_path)
    assert not (tmp_path / "checkpoints").exists()


class NoSchedule(BoringModel):
    data_shape, prediction_type = (1, 8, 8), "epsilon"

    def model_output(self, x_t, t, cond=None):
        return x_t


class BadPrediction(DiffusionModule):
    def __init__(self) -> None:
        super().__init__(ResidualMLP((1, 8, 8), hidden=8, num_blocks=1, time_embed_dim=8), num_timesteps=100)
        self.prediction_type = "noise"


@pytest.mark.parametrize(
    ("module", "error", "match"),
    [
        (BoringModel, TypeError, r"does not implement memcallback\.DiffusionModel: missing \['schedule', "
                                 r"'prediction_type', 'data_shape', 'model_output'\]"),
        (NoSchedule, TypeError, r"missing \['schedule'\]"),
        (BadPrediction, ValueError, "prediction_type 'noise'"),
    ],
)
def test_a_model_without_the_protocol_fails_at_setup(tmp_path, fast_monitor_kwargs, module, error, match) -> None:
    trainer = make_trainer(tmp_path, [MemorizationMonitor(**fast_monitor_kwargs)], max_steps=1)
    with pytest.raises(error, match=match):
        trainer.fit(module(), datamodule=make_data())
    assert trainer.global_step == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sharpness": SharpnessConfig(k=65, krylov_steps=None)}, "k=65 is larger than the data dimension 64"),
        ({"probes": ProbeConfig(num_samples=8, num_sampling_steps=101)},
         "num_sampling_steps=101 exceeds the model's 100 timesteps"),
        ({"probes": ProbeConfig(num_samples=8, timesteps=[100])},
         r"timesteps \[100\] are invalid: expected ints in \[0, 99\]"),
        ({"stop": StopConfig(monitor="memorization/scor", threshold=0.1, min_delta=0.0)},
         r"is not logged by this MemorizationMonitor.*memorization/score"),
        ({"stop": StopConfig(monitor="memorization/auroc", threshold=0.9, min_delta=0.0), "ground_truth": False},
         "monitor='memorization/auroc' is not logged"),
    ],
)
def test_settings_wrong_for_this_model_fail_at_setup(tmp_path, fast_monitor_kwargs, kwargs, match) -> None:
    trainer = make_trainer(tmp_path, [MemorizationMonitor(**(fast_monitor_kwargs | kwargs))], max_steps=1)
    with pytest.raises(ValueError, match=match):
        trainer.fit(make_module(), datamodule=make_data())
    assert trainer.global_step == 0


@pytest.mark.parametrize("ground_truth", [True, False])
def test_data_of_the_wrong_shape_fails_at_setup(tmp_path, fast_monitor_kwargs, ground_truth) -> None:
    """2-D toy points for a model of 8x8 images: named at setup instead of a shape error deep in the network."""
    monitor = MemorizationMonitor(**fast_monitor_kwargs, ground_truth=ground_truth)
    trainer = make_trainer(tmp_path, [monitor], max_steps=1)
    with pytest.raises(ValueError, match=r"shape \(2,\) but the model's data_shape is \(1, 8, 8\)"):
        trainer.fit(make_module(), datamodule=ToyMixtureDataModule(num_points=64, batch_size=8))
    assert trainer.global_step == 0


def test_a_setup_error_surfaces_unwrapped_through_the_app(hydra_configs, tmp_path) -> None:
    cfg = compose("train", overrides=["logger=none", "trainer.max_steps=2", *TINY_APP,
                                      "callbacks.memorization.sharpness.k=65",
                                      "callbacks.memorization.sharpness.krylov_steps=null"])
    with pytest.raises(ValueError, match="k=65 is larger than the data dimension 64"):
        run(cfg, output_dir=tmp_path)
