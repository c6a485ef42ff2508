"""The run folder and its outputs under faults: an interrupted search continued by its own
hint, refused resumes that leave the run as it was, a damaged or deleted evaluation log, an
export folder holding another architecture, a read-only run folder, quick benchmark runs.
The study storage (shared by two folders, credentials): test_rel_storage.py."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import yaml
from rel_evaluators import attempts
from rel_helpers import (
    FakeDisk,
    best_by_arch,
    cli,
    csv_rows,
    evaluation_counts,
    faulty,
    load_study,
    one_line_error,
    search_cli,
    states,
    summary_line,
    tree,
    write_config,
)

pytestmark = [pytest.mark.fault, pytest.mark.timeout(120), pytest.mark.usefixtures("rel_ray")]

NO_MEM = {"memory_budget_mb": None}




def _digest(d: Path) -> dict[str, str]:
    return {p: hashlib.sha256((d / p).read_bytes()).hexdigest() for p in sorted(tree(d))}


def _short(text: str, tmp: Path) -> str:
    return text.replace(str(tmp), "<tmp>")


def _consistent(run: Path) -> None:
    """Nothing RUNNING, no evaluation run twice, pareto.csv == the study's front, trials.csv
    one row per trial, no temp file."""
    study = load_study(run)
    assert states(study)["RUNNING"] == 0
    assert max(evaluation_counts(run).values()) == 1
    assert {int(r["number"]) for r in csv_rows(run / "pareto.csv")} == best_by_arch(study)
    assert len(csv_rows(run / "trials.csv")) == len(study.trials)
    assert not list(run.rglob("*.tmp"))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 6-trial search with the attempts-logging evaluator (copied per test)."""
    d = tmp_path_factory.mktemp("rundir")
    cfg = write_config(d / "cfg.yaml", constraints=NO_MEM, evaluator=faulty(d / "script"),
                       search={"n_trials": 6})
    rc, out, err = search_cli(cfg, d / "run")
    assert rc == 0, err
    return cfg, d / "run", d / "script"


def _copy(finished_run, tmp_path):
    cfg, run, script = finished_run
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return cfg, dst, script


# ---- defect 5: the interruption hint continues the same search ----------------------------------

def test_interrupted_search_continues_with_its_own_hint(tmp_path, monkeypatch, record):
    """`--n-trials 10` over a config that says 4, Ctrl-C after 3 trials: the printed command,
    run as printed, takes the study to 10, and config.yaml/report.md keep the target 10."""
    import experiments.runner as runner

    cfg = write_config(tmp_path / "cfg.yaml", constraints=NO_MEM,
                       evaluator=faulty(tmp_path / "script"), search={"n_trials": 4})
    run = tmp_path / "run"
    finished = runner.Driver._finished

    def ctrl_c_after_3(self):
        finished(self)
        if self.done == 3:
            signal.raise_signal(signal.SIGINT)  # what Ctrl-C does: the driver's handler

    monkeypatch.setattr(runner.Driver, "_finished", ctrl_c_after_3)
    rc, out, err = search_cli(cfg, run, "--n-trials", "10", "--workers", "1")
    monkeypatch.undo()
    assert rc == 130, err
    hint = err.strip().splitlines()[-1].strip()
    argv = shlex.split(hint)
    assert argv[:2] == ["temponas", "search"], hint
    rc, out, err = cli(*argv[1:])
    assert rc == 0, err
    st = states(load_study(run))
    assert st["COMPLETE"] == 10 and st["RUNNING"] == 0 and st["WAITING"] == 0, st
    _consistent(run)
    stored = yaml.safe_load((run / "config.yaml").read_text())["search"]
    assert stored["n_trials"] == 10 and stored["workers"] == 1, stored
    assert "target 10 trials" in (run / "report.md").read_text()
    record("fault", "search interrupted (Ctrl-C), then continued with the printed command",
           "`search --n-trials 10 --workers 1` over a config saying n_trials 4; SIGINT after 3 "
           "trials; the hint's command run exactly as printed",
           f"exit 130 and \"{_short(hint, tmp_path)}\"; the hinted command exits 0: "
           f"\"{_short(summary_line(out), tmp_path)}\"",
           "10/10 COMPLETE, 0 RUNNING, 0 WAITING, no evaluation repeated; config.yaml keeps "
           "n_trials 10 and workers 1, report.md 'target 10 trials'")


# ---- defect 7: a refused resume writes nothing ---------------------------------------------------

@pytest.mark.parametrize("change", ["name", "storage"])
def test_refused_resume_leaves_the_run_as_it_was(finished_run, tmp_path, change, record):
    cfg, run, _ = _copy(finished_run, tmp_path)
    before = _digest(run)
    d = yaml.safe_load(cfg.read_text())
    if change == "name":
        d["name"] = "renamed"
    else:
        d["search"]["storage"] = f"sqlite:///{tmp_path / 'other.db'}"
    bad = tmp_path / "changed.yaml"
    bad.write_text(yaml.safe_dump(d))
    rc, out, err = search_cli(bad, run, "--resume")
    msg = one_line_error(rc, err)
    assert ("name: 'renamed' differs" if change == "name" else "search.storage:") in msg, msg
    assert _digest(run) == before, "the refused resume changed the run"
    assert set(os.listdir(tmp_path)) == {"run", "changed.yaml"}, "a stray file was created"
    report = (run / "report.md").read_text().replace(str(finished_run[1]), str(run))  # a copy
    line = next(ln for ln in report.splitlines() if "--resume" in ln).split("   #")[0]
    rc, out, err = cli(*shlex.split(line)[1:], "--no-progress")
    assert rc == 0, err
    st = states(load_study(run))
    assert st["COMPLETE"] == 12 and st["RUNNING"] == 0, st
    _consistent(run)
    record("bad input", f"`--resume` with a changed `{change}`",
           f"`search changed.yaml --out RUN --resume` where changed.yaml has another {change}"
           + (" (a sqlite:/// URL)" if change == "storage" else ""),
           f"exit 2: \"{_short(msg, tmp_path)}\"",
           f"run byte-identical ({len(before)} files), no stray storage file; the report's own "
           f"resume command then runs the study to 12/12 COMPLETE")


# ---- defect 10: the evaluation log -----------------------------------------------------------

def test_torn_evaluation_log_line_is_cut_before_the_next_record(finished_run, tmp_path, record):
    cfg, run, _ = _copy(finished_run, tmp_path)
    log = run / "evaluations.jsonl"
    n_before = len(evaluation_counts(run))
    torn = b'{"arch_id": "0123456789ab", "budget": 0, "conf'
    with open(log, "ab") as f:
        f.write(torn)
    rc, out, err = search_cli(cfg, run, "--resume", "--n-trials", "9")
    assert rc == 0, err
    lines = log.read_bytes().splitlines()
    assert all(json.loads(ln) for ln in lines), "a record was glued to the torn line"
    assert torn not in log.read_bytes()
    st = states(load_study(run))
    assert st["COMPLETE"] == 9, st
    counts = evaluation_counts(run)
    assert len(counts) == len(lines) == n_before + 3 and max(counts.values()) == 1, counts
    _consistent(run)
    record("fault", "evaluation log ends in a torn line, then the search appends to it",
           "half a JSON line (no newline) appended to evaluations.jsonl, then `--resume "
           "--n-trials 9`",
           f"nothing: the torn line is cut before the next append (common.fsio.append_jsonl); "
           f"\"{summary_line(out)}\"",
           f"all {len(lines)} lines parse: the {n_before} old evaluations and the 3 new ones, "
           f"none lost or glued, none run twice")


SMALL_SPACE = {"defaults": {"kinds": ["none", "conv1d"], "counts": [1], "heads": [2],
                             "kernel_t": [3]}}  # 32 architectures: later trials revisit some


def test_deleted_evaluation_log_is_rebuilt_from_the_study(tmp_path, record):
    script = tmp_path / "script"
    cfg = write_config(tmp_path / "cfg.yaml", constraints=NO_MEM, evaluator=faulty(script),
                       space=SMALL_SPACE, search={"n_trials": 6, "sampler": "random"})
    d = yaml.safe_load(cfg.read_text())
    d["search"]["sampler_options"] = {}
    cfg.write_text(yaml.safe_dump(d))
    run = tmp_path / "run"
    rc, out, err = search_cli(cfg, run)
    assert rc == 0, err
    study = load_study(run)
    known = {t.user_attrs["arch_id"] for t in study.trials if t.state.name == "COMPLETE"}
    old = evaluation_counts(run)
    (run / "evaluations.jsonl").unlink()
    n_attempts = len(attempts(script))
    rc, out, err = search_cli(cfg, run, "--resume", "--n-trials", "24")
    assert rc == 0, err
    repaired = next((ln for ln in out.splitlines() if ln.startswith("repaired")), "")
    assert f"restored {len(old)} evaluation(s)" in repaired, out
    new = attempts(script)[n_attempts:]
    study = load_study(run)
    st = states(study)
    # a repeated proposal is told its first outcome and not counted (experiments.ledger)
    counted = [t for t in study.trials if t.state.name == "COMPLETE"
               and t.user_attrs.get("duplicate_of") is None]
    assert len(counted) == 24 and st["RUNNING"] == 0, st
    revisits = sum(1 for t in study.trials[6:] if t.user_attrs.get("arch_id") in known)
    assert revisits >= 1, "no later trial proposed a known architecture: the test proves nothing"
    again = [a for a in new if a[3] in known]
    assert not again, f"{len(again)} evaluations of architectures the study already knew"
    counts = evaluation_counts(run)
    assert set(old) <= set(counts) and max(counts.values()) == 1
    _consistent(run)
    record("fault", "evaluation log deleted between runs",
           "evaluations.jsonl removed, then `--resume --n-trials 24` (random sampler, a "
           "32-architecture space, so later trials propose known architectures)",
           f"\"{_short(repaired, tmp_path)}\"; \"{summary_line(out)}\"",
           f"the {len(old)} evaluations rebuilt from the study; {revisits} later trials proposed "
           f"an architecture the study already knew and took it from the log: 0 evaluated "
           f"again ({len(new)} evaluations, all of new architectures)")


# ---- defect 13: an export folder holds one architecture ------------------------------------------

def _export_content(out: Path) -> dict[str, object]:
    """Files by digest; ``model.safetensors`` by tensors and metadata (its header lists the
    metadata in a per-process hash order, so equal exports need not be equal bytes)."""
    from safetensors import safe_open

    d: dict[str, object] = _digest(out)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        d["model.safetensors"] = (f.metadata(), {k: hashlib.sha256(
            f.get_tensor(k).numpy().tobytes()).hexdigest() for k in f.keys()})
    return d


def test_export_into_another_architectures_folder_is_refused(finished_run, tmp_path, record):
    _, run, _ = finished_run
    ids = sorted({r["arch_id"] for r in csv_rows(run / "trials.csv") if r["state"] == "COMPLETE"})
    out = tmp_path / "exp"
    rc, o, e = cli("export", str(run), "--arch-id", ids[0], "--format", "torch", "--out", str(out))
    assert rc == 0, e
    before = _export_content(out)
    rc, o, e = cli("export", str(run), "--arch-id", ids[1], "--format", "json", "--out", str(out))
    msg = one_line_error(rc, e)
    assert "already holds the export of another architecture" in msg and ids[0] in msg, msg
    assert _export_content(out) == before
    rc, o, e = cli("export", str(run), "--arch-id", ids[0], "--format", "torch", "--out", str(out))
    assert rc == 0, e
    assert _export_content(out) == before  # the same architecture again: the same export
    record("bad input", "`temponas export` into a folder holding another architecture's export",
           f"export {ids[0]} (torch) to exp/, then {ids[1]} (json) to the same exp/",
           f"exit 2: \"{_short(msg, tmp_path)}\"",
           "exp/ unchanged; exporting the same architecture again is allowed and rewrites the "
           "same export (same files, tensors and metadata)")


# ---- defect 15: pareto on a read-only run folder ----------------------------------------------

def test_pareto_prints_the_front_of_a_read_only_run(finished_run, tmp_path, monkeypatch, record):
    from common import fsio

    cfg, run, _ = _copy(finished_run, tmp_path)
    before = _digest(run)
    disk = FakeDisk(run, budget=0, err=errno.EROFS)
    monkeypatch.setattr(fsio, "os", disk)
    rc, out, err = cli("pareto", str(run))
    monkeypatch.undo()
    assert rc == 0, err
    assert disk.failures >= 1 and "Traceback" not in err
    note = err.strip()
    assert note.startswith("note: ") and "Read-only file system" in note, err
    rows = [ln.split()[0] for ln in out.splitlines()[1:] if ln.split() and ln.split()[0].isdigit()]
    assert {int(n) for n in rows} == best_by_arch(load_study(run)), out
    assert _digest(run) == before
    record("fault", "`temponas pareto` on a read-only run folder",
           "every fsync/rename under the run dir fails with EROFS",
           f"exit 0, the front printed ({len(rows)} architectures) and on stderr "
           f"\"{_short(note, tmp_path)}\"",
           "run folder byte-identical")


# ---- benchmarks: a --quick run never rewrites a committed result ----------------------------------

#: benchmarks with a rule of their own: latency_accuracy writes its JSON only for full runs (its
#: quick data dir is gitignored); proxy_fidelity writes a quick run only where --out says
OWN_QUICK_RULE = {"latency_accuracy.py": "if not quick:",
                  "proxy_fidelity.py": '"" if args.quick else'}


def test_quick_benchmark_runs_write_untracked_files_only(record):
    """Every benchmark with a --quick mode takes its output directory from
    ``bench_results.results_dir(quick, --out)`` (or has a rule of its own, checked below); the
    quick directory is gitignored and holds no tracked file, so `--quick --json` leaves the
    checkout clean."""
    import ast

    root = Path(__file__).resolve().parents[2]
    bench = root / "benchmarks"
    quick_mode, routed = [], []
    for p in sorted(bench.glob("*.py")):
        src = p.read_text()
        if '"--quick"' not in src:
            continue
        quick_mode.append(p.name)
        calls = {n.func.id for n in ast.walk(ast.parse(src))
                 if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        writes = any(w in src for w in ("atomic_write", "write_report(", "savefig"))
        if "results_dir" in calls or not writes or p.name in OWN_QUICK_RULE:
            routed.append(p.name)
    for name, rule in OWN_QUICK_RULE.items():  # benchmarks that keep a quick run elsewhere
        assert rule in (bench / name).read_text(), (name, rule)
    assert routed == quick_mode, sorted(set(quick_mode) - set(routed))

    def ignored(rel: str) -> bool:
        return subprocess.run(["git", "check-ignore", "-q", rel], cwd=root).returncode == 0

    tracked = subprocess.run(["git", "ls-files", "benchmarks/results/quick"], cwd=root,
                             capture_output=True, text=True, check=True).stdout.split()
    assert ignored("benchmarks/results/quick/overhead_quick.json") and not tracked
    assert ignored("benchmarks/results/latency_data_quick/device1.csv")
    record("safety", "`benchmarks/*.py --quick --json` never overwrites committed results",
           f"source check of the {len(quick_mode)} benchmarks with a --quick mode "
           f"({', '.join(quick_mode)}) and `git check-ignore`",
           "quick runs write to benchmarks/results/quick/ (gitignored; --out DIR elsewhere), "
           "proxy_fidelity's only with --out, latency_accuracy's JSON never; full runs to "
           "benchmarks/results/",
           "the committed results (e.g. proxy_fidelity_quick.json) stay as committed")
