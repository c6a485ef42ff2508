"""Shared pytest set-up (kept minimal: every package's fixtures live next to its tests)."""

import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
