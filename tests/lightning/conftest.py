"""Fixtures for the callback tests."""

import pytest


@pytest.fixture
def fast_monitor_kwargs() -> dict:
    return dict(num_samples=8, num_sampling_steps=5, k=4, every_n_train_steps=2, save_plot=False, log_media=False)
