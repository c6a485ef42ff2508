"""Shared pytest set-up (kept minimal: every package's fixtures live next to its tests)."""

import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # a pytest-xdist worker (set before this file is imported, torch and numpy are not yet):
    # one OpenMP/BLAS thread each, or the workers' spinning thread pools fight over the cores.
    # Code under test that sets its own threads (evaluations, latency timing) still does.
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

# the records of the reliability scenarios (docs/reliability.md): collected in the process that
# writes them, the pytest-xdist controller included (which loads no conftest below tests/)
pytest_plugins = ("reliability_records",)
