"""Fixtures for the callback tests."""

import pytest

from memcallback import GovernorConfig, ProbeConfig, SharpnessConfig


@pytest.fixture
def fast_monitor_kwargs() -> dict:
    return dict(probes=ProbeConfig(num_samples=8, num_sampling_steps=5), sharpness=SharpnessConfig(k=4),
                every_n_train_steps=2, save_plot=False, media="none",
                governor=GovernorConfig(max_overhead=None))  # every check full: these checks outweigh the training
