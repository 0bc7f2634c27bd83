import math

import pytest

from memcallback.core.stopping import StopConfig, StopRule


def fire_index(rule: StopRule, series: list[float]) -> int | None:
    for i, value in enumerate(series):
        if rule.update(value):
            return i
    return None


@pytest.mark.parametrize(
    ("series", "expected"),
    [
        ([0.0, 0.1, 0.2, 0.4, 0.6, 0.7, 0.8], 4),  # past 0.3 from index 3; patience 2 -> fires at 4
        ([0.0, 0.0, 0.0, 0.0, 0.0, 0.0], None),  # flat below the threshold
        ([0.6, 0.6, 0.6, 0.6, 0.6, 0.6], None),  # flat above the threshold: never rose from its best
        ([0.0, 0.5, 0.1, 0.5, 0.1, 0.5], None),  # a quiet check resets the patience count
        ([0.0, 0.2, 0.25, 0.28, 0.29], None),  # rising but never past the threshold
    ],
)
def test_fires_on_rising_series_only(series: list[float], expected: int | None) -> None:
    config = StopConfig(monitor="memorization/score", mode="max", threshold=0.3, min_delta=0.05, patience=2)
    assert fire_index(StopRule(config), series) == expected


def test_min_mode_mirrors_max_mode() -> None:
    series = [60.0, 55.0, 40.0, 20.0, 10.0, 5.0]
    rule = StopRule(StopConfig(monitor="memorization/effective_dim", mode="min", threshold=30.0, min_delta=1.0,
                               patience=2))
    assert fire_index(rule, series) == 4
    assert "below" in rule.reason and "30" in rule.reason


def test_fires_once_and_ignores_non_finite_values() -> None:
    rule = StopRule(StopConfig(monitor="memorization/score", threshold=None, min_delta=0.0, patience=1))
    assert rule.update(0.1) is False
    assert rule.update(math.nan) is False and rule.wait_count == 0
    assert rule.update(0.2) is True
    assert rule.update(0.3) is False  # already stopped: the decision is reported once
    assert rule.stopped


def test_state_dict_resumes_half_way_through_patience() -> None:
    rule = StopRule(StopConfig(monitor="memorization/score", threshold=0.3, min_delta=0.05, patience=3))
    for value in (0.0, 0.5, 0.6):
        assert not rule.update(value)
    assert rule.wait_count == 2
    resumed = StopRule(StopConfig(monitor="memorization/score", threshold=0.3, min_delta=0.05, patience=3))
    resumed.load_state_dict(rule.state_dict())
    assert (resumed.best, resumed.wait_count) == (0.0, 2)
    assert resumed.update(0.7) is True


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "up"}, "mode"),
        ({"threshold": "high"}, "threshold"),
        ({"threshold": math.inf}, "threshold"),
        ({"min_delta": -1.0}, "min_delta"),
        ({"patience": 0}, "patience"),
        ({"patience": 1.5}, "patience"),
        ({"monitor": ""}, "monitor"),
        ({"stop_training": 1}, "stop_training"),
        ({"restore_safe_weights": "yes"}, "restore_safe_weights"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        StopConfig(**kwargs)


def test_auto_picks_the_loss_gap_then_the_copy_rate_then_the_score() -> None:
    from memcallback.core.calibration import CALIBRATED_RULES
    from memcallback.measure import names

    for logged, key in (({names.LOSS_GAP, names.NN_RATE_LOWER, names.SCORE}, names.LOSS_GAP),
                        ({names.NN_RATE_LOWER, names.SCORE}, names.NN_RATE_LOWER), ({names.SCORE}, names.SCORE)):
        resolved = StopConfig().resolve(names.PREFIX, logged)
        rule = CALIBRATED_RULES[key]
        assert (resolved.monitor, resolved.threshold, resolved.min_delta) == (
            names.PREFIX + key, rule.threshold, rule.min_delta)
