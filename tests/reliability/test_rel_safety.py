"""Safety checks of the package source: no unpickling, YAML only through safe_load, torch
weights only with weights_only=True, every file write atomic (temp file + rename)."""

from __future__ import annotations

import ast
import math
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("common", "search_space", "latency_models", "evaluators", "experiments")
SOURCES = sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))

pytestmark = pytest.mark.timeout(60)


def _rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Name):
        return node.id
    return "?"


def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value
    return None


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def test_sources_found():
    assert len(SOURCES) > 30


def test_no_unsafe_deserialization(record):
    bad = []
    for p in SOURCES:
        text = p.read_text()
        # the literal greps of the acceptance criteria
        for pat in (r"pickle\.loads?\(", r"yaml\.load\(", r"yaml\.unsafe_load", r"cloudpickle",
                    r"joblib\.load", r"dill\.load"):
            for m in re.finditer(pat, text):
                bad.append(f"{_rel(p)}:{text[:m.start()].count(chr(10)) + 1}: {m.group(0)}")
        tree = ast.parse(text)
        for call in _calls(tree):
            name = _dotted(call.func)
            if name.endswith("torch.load") or name == "torch.load":
                if not _is_true(_kw(call, "weights_only")):
                    bad.append(f"{_rel(p)}:{call.lineno}: torch.load without weights_only=True")
            if name in ("np.load", "numpy.load") and _is_true(_kw(call, "allow_pickle")):
                bad.append(f"{_rel(p)}:{call.lineno}: np.load(allow_pickle=True)")
            if name.endswith("yaml.load") or name == "yaml.full_load":
                bad.append(f"{_rel(p)}:{call.lineno}: {name}")
    record("safety", "no unpickling of anything that outlives a process",
           f"scan of {len(SOURCES)} package files (regex + AST): pickle.load(s), yaml.load/"
           "unsafe_load, torch.load without weights_only=True, np.load(allow_pickle=True), "
           "joblib/dill/cloudpickle",
           f"{len(bad)} found" + (f": {bad}" if bad else ""), "-")
    assert not bad, bad


WRITE_MODES = re.compile(r"[wax+]")
RENAMES = re.compile(r"os\.replace\(|\btmp\w*\.replace\(|\.replace\(tmp|\batomic_(write|path|dir)")


def _write_sites(tree: ast.AST):
    """(line, what) of every call that writes a file."""
    for call in _calls(tree):
        name = _dotted(call.func)
        short = name.rsplit(".", 1)[-1]
        if name in ("open", "io.open", "os.fdopen", "builtins.open"):
            mode = call.args[1] if len(call.args) > 1 else _kw(call, "mode")
            if isinstance(mode, ast.Constant) and isinstance(mode.value, str) and WRITE_MODES.search(mode.value):
                yield call.lineno, f"{name}(..., {mode.value!r})"
        elif short in ("write_text", "write_bytes", "savefig", "savez", "savez_compressed",
                       "save_file"):
            # savefig into an in-memory buffer is not a file write
            first = call.args[0] if call.args else None
            if short == "savefig" and isinstance(first, ast.Name) and first.id in ("buf", "bio"):
                continue
            yield call.lineno, name


def _enclosing_functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_every_file_write_is_atomic(record):
    """A write must happen in a function that renames a temp file over its target
    (``os.replace``) or go through ``common.fsio``'s atomic writer. Append-only logs are
    allowed where they fsync one complete record per write."""
    allowed_appends = {("common/fsio.py", "append_jsonl"),  # one fsync'd JSON line per write
                       ("common/fsio.py", "file_lock"),  # opens an empty lock file, writes nothing
                       ("experiments/study.py", "repair_run_journal")}  # cuts a partial record
    bad, sites = [], 0
    for p in SOURCES:
        text = p.read_text()
        tree = ast.parse(text)
        funcs = list(_enclosing_functions(tree))
        for line, what in _write_sites(tree):
            sites += 1
            encl = [f for f in funcs if f.lineno <= line <= (f.end_lineno or f.lineno)]
            f = min(encl, key=lambda f: (f.end_lineno or 0) - f.lineno) if encl else None
            body = ast.get_source_segment(text, f) if f else ""
            if f is not None and (_rel(p), f.name) in allowed_appends:
                continue
            if RENAMES.search(body):
                continue
            bad.append(f"{_rel(p)}:{line}: {what} in {f.name if f else '<module>'}()")
    record("safety", "every file write is atomic (temp file + rename)",
           f"AST scan of {len(SOURCES)} package files: {sites} write sites (open for write/append, "
           "write_text/bytes, savefig, savez, save_file) must sit in a function that "
           "renames a temp file (os.replace) or use common.fsio's atomic writer",
           f"{len(bad)} non-atomic" + (f": {bad}" if bad else ""),
           "the runtime check (test_rel_faults::test_run_outputs_are_written_atomically) covers "
           "a whole search")
    assert not bad, bad


def test_one_bounded_yaml_loader(record):
    """Every YAML temponas reads goes through ``common.loaders`` (bounded in size, nesting and
    alias expansion, no repeated keys): no other module parses YAML."""
    parse = re.compile(r"yaml\.(safe_load|load|full_load|unsafe_load|compose|parse)\b|"
                       r"yaml\.(Safe|Full|Unsafe)?Loader\b|CSafeLoader")
    files = SOURCES + sorted((ROOT / "benchmarks").rglob("*.py"))
    bad = [f"{_rel(p)}:{p.read_text()[:m.start()].count(chr(10)) + 1}: {m.group(0)}"
           for p in files if _rel(p) != "common/loaders.py"
           for m in parse.finditer(p.read_text())]
    record("safety", "one bounded YAML loader",
           f"scan of {len(files)} package and benchmark files for YAML parsing outside "
           "common/loaders.py", f"{len(bad)} found" + (f": {bad}" if bad else ""),
           "limits in common/limits.py (docs/limits.md)")
    assert not bad, bad


def _numeric_keys(cls: type, prefix: str = "") -> list[tuple[str, object]]:
    """(dotted path, default) of the int/float fields (also inside tuples and Optionals) of a
    dataclass, recursing into nested dataclasses."""
    import dataclasses
    import typing

    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        t = hints[f.name]
        args = [a for a in typing.get_args(t) if a is not type(None)] or [t]
        if dataclasses.is_dataclass(t):
            out += _numeric_keys(t, f"{prefix}{f.name}.")
        elif any(a in (int, float) or typing.get_args(a)[:1] in ((int,), (float,)) for a in args):
            out.append((f"{prefix}{f.name}", f.default))
    return out


def test_every_numeric_option_has_a_declared_range(record):
    """Each numeric key of the experiment config and of every registered evaluator's options
    has a sane range in ``common.limits.OPTION_RANGES`` (``threads: 10**20`` is one line)."""
    from common.limits import OPTION_RANGES
    from evaluators.registry import available, resolve
    from experiments.config import ExperimentConfig

    keys = _numeric_keys(ExperimentConfig)
    for name in available():
        opts = getattr(resolve(name), "Options", None)
        if opts is not None:
            keys += [(f"evaluator.options[{name}].{k}", d) for k, d in _numeric_keys(opts)]
    assert len(keys) > 30, keys
    missing = sorted({k for k, _ in keys if k.rsplit(".", 1)[-1] not in OPTION_RANGES})
    for k, default in keys:  # every default lies in its own range
        lo, hi = OPTION_RANGES.get(k.rsplit(".", 1)[-1], (-math.inf, math.inf))
        for d in default if isinstance(default, tuple) else (default,):
            if isinstance(d, (int, float)) and not isinstance(d, bool):
                assert lo <= d <= hi, (k, d, (lo, hi))
    record("safety", "every numeric option has a declared range",
           f"{len(keys)} numeric keys of the experiment config and of {len(available())} "
           "registered evaluators' options", f"{len(missing)} without a range"
           + (f": {missing}" if missing else ""), "ranges in common/limits.py (docs/limits.md)")
    assert not missing, missing
