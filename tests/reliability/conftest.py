"""Fixtures of the reliability tests: the ``record`` fixture behind ``docs/reliability.md`` and
the shared local Ray.

Each scenario calls ``record`` once with what was injected, what the user saw (the real
message/exit code captured in the test) and what was kept. The rows and each test's outcome go
to an untracked JSON file at the end of the session (``tests/reliability_records.py``, which
also works under pytest-xdist); ``meta.complete`` is true only if EVERY reliability test was
collected and ran. Tests never write ``docs/reliability.md``: ``make reliability-doc`` runs this
suite and renders the table with ``tools/reliability_table.py``, which refuses records of a
partial run.
"""

from __future__ import annotations

import os

import pytest
from reliability_records import record_row

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture
def record(request):
    """``record(kind, scenario, injected, user_sees, kept)`` adds one row to the table."""

    def add(kind: str, scenario: str, injected: str, user_sees: str, kept: str) -> None:
        record_row(request.node, kind, scenario, injected, user_sees, kept)

    return add


@pytest.fixture(scope="module")
def rel_ray(shared_ray):
    """The local Ray shared by every reliability scenario that does not need its own (the test
    plug-ins importable on its workers; tests/conftest.py ``shared_ray``). Its GCS address."""
    return shared_ray


# ---- order: tests that start their own Ray cluster last -------------------------------------

def pytest_collection_modifyitems(session, config, items):
    """Tests that start their own Ray cluster run last, after the shared Ray is no longer needed."""
    own = [it for it in items if it.get_closest_marker("own_ray_cluster")]
    if own:
        items[:] = [it for it in items if not it.get_closest_marker("own_ray_cluster")] + own


def pytest_configure(config):
    config.addinivalue_line("markers", "own_ray_cluster: starts its own Ray cluster (runs last)")
