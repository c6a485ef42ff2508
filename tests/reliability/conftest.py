"""Fixtures of the reliability tests and the collector of the records behind ``docs/reliability.md``.

Each scenario calls the ``record`` fixture once with what was injected, what the user saw
(the real message/exit code captured in the test) and what was kept. At the end of a session
that ran reliability tests, the records and each test's outcome go to an untracked JSON file,
``$TEMPONAS_RELIABILITY_RECORDS`` or ``.pytest_cache/temponas_reliability.json``, with
``meta.complete`` true only if EVERY reliability test was collected and ran (no ``-k``/``-m``
deselection, no single-file run, no skip). Tests never write ``docs/reliability.md``:
``make reliability-doc`` runs this suite and renders the table with
``tools/reliability_table.py``, which refuses records of a partial run.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
from rel_helpers import plugin_path

from common.fsio import atomic_write_text

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SMOKE = ROOT / "experiments" / "configs" / "smoke.yaml"
RECORDS_JSON = ROOT / ".pytest_cache" / "temponas_reliability.json"  # untracked (.gitignore)

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

_RECORDS: list[dict] = []
_STATE = {"items": set(), "outcomes": {}, "deselected": 0, "started": None, "durations": {}}


def _is_rel(nodeid: str) -> bool:
    return nodeid.replace("\\", "/").startswith("tests/reliability/")


_TMP = re.compile(r"/tmp/pytest-of-[^/\s]+/pytest-\d+/[^/\s\"']+")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _clean(text: str) -> str:
    """One line, no ANSI colours, pytest's temp dirs shown as <tmp>."""
    return " ".join(_TMP.sub("<tmp>", _ANSI.sub("", str(text))).split())


@pytest.fixture
def record(request):
    """``record(kind, scenario, injected, user_sees, kept)`` adds one row to the table."""

    def add(kind: str, scenario: str, injected: str, user_sees: str, kept: str) -> None:
        assert kind in ("fault", "bad input", "concurrency", "safety"), kind
        _RECORDS.append({"kind": kind, "scenario": _clean(scenario), "injected": _clean(injected),
                         "user_sees": _clean(user_sees), "kept": _clean(kept),
                         "test": request.node.nodeid})

    return add


@pytest.fixture(scope="session")
def rel_ray():
    """One local Ray (2 CPUs, loopback, no dashboard) shared by every reliability scenario
    that does not need its own (its workers stay warm between tests). The two-node cluster
    test replaces it and runs last (see pytest_collection_modifyitems)."""
    import ray

    from experiments.distributed import ensure_ray

    if not _STATE.get("ray_started") or not ray.is_initialized():
        if ray.is_initialized():
            ray.shutdown()
        with plugin_path():
            ensure_ray(None, 2)
        _STATE["ray_started"] = True
    yield ray.get_runtime_context().gcs_address


# ---- session hooks: outcomes of every reliability test, then the records file ----------------

def pytest_collection_modifyitems(session, config, items):
    """Tests that start their own Ray cluster run last, after the shared Ray is no longer needed."""
    _STATE["started"] = time.monotonic()
    own = [it for it in items if it.get_closest_marker("own_ray_cluster")]
    if own:
        items[:] = [it for it in items if not it.get_closest_marker("own_ray_cluster")] + own


def pytest_configure(config):
    config.addinivalue_line("markers", "own_ray_cluster: starts its own Ray cluster (runs last)")


def pytest_deselected(items):
    _STATE["deselected"] += sum(1 for it in items if _is_rel(it.nodeid))


def pytest_collection_finish(session):
    _STATE["items"] = {it.nodeid for it in session.items if _is_rel(it.nodeid)}
    _STATE["modules"] = {it.nodeid.split("::")[0].rsplit("/", 1)[-1] for it in session.items
                         if _is_rel(it.nodeid)}


_RANK = {"passed": 0, "skipped": 1, "failed": 2}


def pytest_runtest_logreport(report):
    """Worst outcome over setup/call/teardown, and the total duration, per reliability test."""
    if not _is_rel(report.nodeid):
        return
    prev = _STATE["outcomes"].get(report.nodeid)
    cur = report.outcome
    if prev is None or _RANK.get(cur, 2) > _RANK.get(prev, 2):
        _STATE["outcomes"][report.nodeid] = cur
    _STATE["durations"][report.nodeid] = _STATE["durations"].get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session, exitstatus):
    items = _STATE["items"]
    outcomes = _STATE["outcomes"]
    if not outcomes:  # no reliability test ran in this session
        return
    expected_modules = {p.name for p in HERE.glob("test_*.py")}
    complete = bool(items and _STATE["deselected"] == 0
                    and _STATE.get("modules") == expected_modules
                    and set(outcomes) == items
                    and "skipped" not in outcomes.values()
                    and exitstatus != pytest.ExitCode.INTERRUPTED)
    rows = [{**r, "outcome": outcomes.get(r["test"], "unknown")} for r in _RECORDS]
    recorded = {r["test"] for r in _RECORDS}
    for nodeid, out in sorted(outcomes.items()):
        if out != "passed" and nodeid not in recorded:
            rows.append({"kind": "fault", "scenario": nodeid.split("::")[-1], "injected": "",
                         "user_sees": "the test failed before recording its scenario", "kept": "",
                         "test": nodeid, "outcome": out})
    meta = {"complete": complete, "tests": len(items),
            "passed": sum(o == "passed" for o in outcomes.values()),
            "modules": sorted(_STATE.get("modules", ())), "expected_modules": sorted(expected_modules),
            "duration_s": round(sum(_STATE["durations"].values()), 1),
            "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    path = Path(os.environ.get("TEMPONAS_RELIABILITY_RECORDS") or RECORDS_JSON)
    atomic_write_text(path, json.dumps({"meta": meta, "records": rows}, indent=1, sort_keys=True) + "\n")
