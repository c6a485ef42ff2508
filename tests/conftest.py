"""Shared pytest set-up (kept minimal: every package's fixtures live next to its tests)."""

import os
from pathlib import Path

import pytest

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

REL_PLUGINS = Path(__file__).resolve().parent / "reliability"  # rel_evaluators:Faulty & co.
_RAY: dict = {}  # the GCS address of the Ray shared_ray started in this process


@pytest.fixture(scope="module")
def shared_ray():
    """One local Ray per test process (2 CPUs, loopback, no dashboard; the reliability plug-in
    evaluators importable on its workers) for every module that needs "a Ray" (experiments'
    ``local_ray``, reliability's ``rel_ray``): kept from module to module, so its workers stay
    warm, and started again when a module stopped or replaced it (test files run in any order
    under pytest-xdist). Modules that need a Ray of their own (a cluster, the docs walk with its
    environment) shut it down first. Yields its GCS address."""
    import ray

    from experiments.distributed import ensure_ray

    ours = _RAY.get("gcs")
    if not (ours and ray.is_initialized() and ray.get_runtime_context().gcs_address == ours):
        if ray.is_initialized():
            ray.shutdown()
        with pytest.MonkeyPatch.context() as mp:  # Ray's workers inherit it from the raylet
            mp.setenv("PYTHONPATH", os.pathsep.join(
                [str(REL_PLUGINS)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
            ensure_ray(None, 2)
        _RAY["gcs"] = ray.get_runtime_context().gcs_address
    yield _RAY["gcs"]
