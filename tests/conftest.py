"""Shared pytest set-up (kept minimal: every package's fixtures live next to its tests)."""

import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

# the records of the reliability scenarios (docs/reliability.md): collected in the process that
# writes them, the pytest-xdist controller included (which loads no conftest below tests/)
pytest_plugins = ("reliability_records",)
