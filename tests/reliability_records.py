"""The collector of the records behind ``docs/reliability.md`` (a pytest plug-in, registered by
``tests/conftest.py``).

Each reliability scenario calls the ``record`` fixture (tests/reliability/conftest.py), which
attaches its row to the test's report (``user_properties``), so the rows reach the process
that writes the file whether the tests ran in it or in pytest-xdist workers. At the end of a
session that ran reliability tests, the records and each test's outcome go to an untracked
JSON file, ``$TEMPONAS_RELIABILITY_RECORDS`` or ``.pytest_cache/temponas_reliability.json``,
with ``meta.complete`` true only if EVERY reliability test was collected and ran (no
``-k``/``-m`` deselection, no single-file run, no skip, no lost worker). Under xdist only the
controller writes it, from the reports and the workers' collection (``workeroutput``).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from common.fsio import atomic_write_text

HERE = Path(__file__).resolve().parent
REL_DIR = HERE / "reliability"
RECORDS_JSON = HERE.parent / ".pytest_cache" / "temponas_reliability.json"  # untracked (.gitignore)
RECORD_KEY = "temponas_reliability_record"  # the user_properties key of one row
KINDS = ("fault", "bad input", "concurrency", "safety")

_TMP = re.compile(r"/tmp/pytest-of-[^/\s]+/pytest-\d+/(?:popen-gw\d+/)?[^/\s\"']+")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_RANK = {"passed": 0, "skipped": 1, "failed": 2}

_STATE: dict = {"items": [], "modules": set(), "deselected": 0, "outcomes": {}, "durations": {},
                "records": {}, "worker": False, "workers_seen": 0, "workers_lost": 0}


def clean(text: str) -> str:
    """One line, no ANSI colours, pytest's temp dirs (also xdist's per-worker ones) as <tmp>."""
    return " ".join(_TMP.sub("<tmp>", _ANSI.sub("", str(text))).split())


def record_row(node, kind: str, scenario: str, injected: str, user_sees: str, kept: str) -> None:
    """Attach one row of the table to ``node``'s reports."""
    assert kind in KINDS, kind
    node.user_properties.append((RECORD_KEY, {
        "kind": kind, "scenario": clean(scenario), "injected": clean(injected),
        "user_sees": clean(user_sees), "kept": clean(kept), "test": node.nodeid}))


def _is_rel(nodeid: str) -> bool:
    return nodeid.replace("\\", "/").startswith("tests/reliability/")


def pytest_configure(config):
    _STATE["worker"] = hasattr(config, "workerinput")


def pytest_deselected(items):
    _STATE["deselected"] += sum(1 for it in items if _is_rel(it.nodeid))


def pytest_collection_finish(session):
    """Runs where tests are collected: this process, or each xdist worker (not the controller)."""
    _STATE["items"] = [it.nodeid for it in session.items if _is_rel(it.nodeid)]
    _STATE["modules"] = {n.split("::")[0].rsplit("/", 1)[-1] for n in _STATE["items"]}
    if hasattr(session.config, "workeroutput"):  # sent to the controller when the worker ends
        session.config.workeroutput["temponas_reliability"] = {
            "items": _STATE["items"], "modules": sorted(_STATE["modules"]),
            "deselected": _STATE["deselected"]}


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """xdist controller: every worker collected the same tests; a worker that died is noted."""
    got = getattr(node, "workeroutput", {}).get("temponas_reliability")
    if got is None:
        _STATE["workers_lost"] += 1
        return
    _STATE["workers_seen"] += 1
    if len(got["items"]) >= len(_STATE["items"]):
        _STATE["items"] = list(got["items"])
        _STATE["modules"] = set(got["modules"])
    _STATE["deselected"] = max(_STATE["deselected"], got["deselected"])


def pytest_runtest_logreport(report):
    """Worst outcome over setup/call/teardown, total duration and the rows, per reliability
    test (in the process that reports: this one or the xdist controller)."""
    if _STATE["worker"] or not _is_rel(report.nodeid):
        return
    prev = _STATE["outcomes"].get(report.nodeid)
    cur = report.outcome
    if prev is None or _RANK.get(cur, 2) > _RANK.get(prev, 2):
        _STATE["outcomes"][report.nodeid] = cur
    _STATE["durations"][report.nodeid] = _STATE["durations"].get(report.nodeid, 0.0) + report.duration
    rows = [v for k, v in report.user_properties if k == RECORD_KEY]
    if rows:  # each later phase's report carries every row added so far
        _STATE["records"][report.nodeid] = rows


def pytest_sessionfinish(session, exitstatus):
    if _STATE["worker"]:
        return
    items, outcomes = _STATE["items"], _STATE["outcomes"]
    if not outcomes:  # no reliability test ran in this session
        return
    expected_modules = {p.name for p in REL_DIR.glob("test_*.py")}
    complete = bool(items and _STATE["deselected"] == 0 and _STATE["workers_lost"] == 0
                    and _STATE["modules"] == expected_modules
                    and set(outcomes) == set(items)
                    and "skipped" not in outcomes.values()
                    and exitstatus != pytest.ExitCode.INTERRUPTED)
    order = {n: i for i, n in enumerate(items)}  # collection order, whatever ran first
    rows = [{**r, "outcome": outcomes.get(nodeid, "unknown")}
            for nodeid in sorted(_STATE["records"], key=lambda n: (order.get(n, len(order)), n))
            for r in _STATE["records"][nodeid]]
    for nodeid, out in sorted(outcomes.items()):
        if out != "passed" and nodeid not in _STATE["records"]:
            rows.append({"kind": "fault", "scenario": nodeid.split("::")[-1], "injected": "",
                         "user_sees": "the test failed before recording its scenario", "kept": "",
                         "test": nodeid, "outcome": out})
    meta = {"complete": complete, "tests": len(items),
            "passed": sum(o == "passed" for o in outcomes.values()),
            "modules": sorted(_STATE["modules"]), "expected_modules": sorted(expected_modules),
            "duration_s": round(sum(_STATE["durations"].values()), 1),
            "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    path = Path(os.environ.get("TEMPONAS_RELIABILITY_RECORDS") or RECORDS_JSON)
    atomic_write_text(path, json.dumps({"meta": meta, "records": rows}, indent=1, sort_keys=True) + "\n")
