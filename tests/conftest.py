"""Shared fixtures: one Ray for the session (started on first use) and a sample web."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_ACCEPT_CLUSTER_RESOURCE_WARNING", "1")


@pytest.fixture
def ray_local():
    """A running Ray (2 CPUs); reused across tests, restarted if a test shut it down."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    yield ray


@pytest.fixture(scope="module")
def sample_web():
    from clipcurate.curation.sampleweb import SampleWeb

    with SampleWeb(n=200, seed=0) as web:
        yield web
