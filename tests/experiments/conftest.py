"""Fixtures of the experiments tests: a shared local Ray and the smoke config."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "experiments" / "configs" / "smoke.yaml"


@pytest.fixture(scope="session")
def smoke_cfg():
    from experiments.config import load_config

    return load_config(SMOKE)


@pytest.fixture(scope="module")
def local_ray(shared_ray):
    """A local Ray (2 CPUs, loopback, no dashboard) for a test module; runs reuse it. It is the
    one Ray of this test process (tests/conftest.py ``shared_ray``), kept for the next module."""
    return shared_ray
