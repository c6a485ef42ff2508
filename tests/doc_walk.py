"""The machinery of ``test_docs_commands.py``: read the command lines of the docs, and run
documented lines in one workspace (see that module's docstring for the rules)."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import runpy
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
BIN = Path(sys.executable).parent
COMMAND_WORDS = ("temponas", "make", "python", "python3", "pip")
SHELL_FENCES = ("sh", "bash", "console", "shell")


@dataclass(frozen=True)
class DocLine:
    doc: str        # file name
    line: int       # 1-based line number
    kind: str       # "block", "inline" or "table"
    text: str       # as written
    key: str        # shell tokens without comments, joined by one space


def _is_command(text: str) -> bool:
    first = text.split()[0] if text.split() else ""
    return first in COMMAND_WORDS or first.startswith(".venv/bin/")


def _key(text: str) -> str:
    return " ".join(shlex.split(text, comments=True))


def doc_lines(path: Path) -> list[DocLine]:
    """The command lines of one markdown file (fenced blocks and inline code spans)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[DocLine] = []
    prose: list[str] = []  # the text outside fences, fences blanked (keeps line numbers)
    fence, pending = None, ""
    for no, line in enumerate(lines, 1):
        m = re.match(r"^\s*```(\S*)\s*$", line)
        if m:
            fence = None if fence is not None else m.group(1)
            prose.append("")
            continue
        if fence is None:
            prose.append(line)
            continue
        prose.append("")
        if fence not in ("", *SHELL_FENCES):
            continue
        text = pending + line.strip()
        if text.endswith("\\"):  # continued on the next line
            pending = text[:-1] + " "
            continue
        pending, text = "", text.removeprefix("$ ")
        if text and not text.startswith("#") and (fence in SHELL_FENCES or _is_command(text)):
            found.append(DocLine(path.name, no, "block", text, _key(text)))
    joined = "\n".join(prose)
    for m in re.finditer(r"`([^`\n]+(?:\n[^`\n]+)*)`", joined):
        text = " ".join(m.group(1).split())
        if _is_command(text):
            no = joined.count("\n", 0, m.start()) + 1
            kind = "table" if lines[no - 1].lstrip().startswith("|") else "inline"
            found.append(DocLine(path.name, no, kind, text, _key(text)))
    return found


def all_doc_lines() -> list[DocLine]:
    return [d for p in DOCS for d in doc_lines(p)]


@dataclass(frozen=True)
class Case:
    """How a documented line runs: ``steps`` (commands, ``{placeholders}`` filled in from the
    workspace), after the lines in ``after``; ``why`` justifies every difference."""

    steps: tuple[str, ...] = ()
    why: str = ""
    after: tuple[str, ...] = ()
    make_subs: tuple[tuple[str, str], ...] = ()  # (old, new) applied to a make recipe
    repeat: int = 1                               # runs of a make recipe
    cwd: str = "ws"                               # "ws" (the workspace) or "root" (the checkout)
    expect: tuple[str, ...] = ()                  # substrings of the combined output
    files: tuple[str, ...] = ()                   # paths (in the workspace) that must exist after
    server: str = ""                              # a URL path to poll, for a line that serves
    #: steps another test already runs exactly (``path::function``), with the step's text
    covered_by: tuple[tuple[str, str], ...] = ()


def mention_of(d: DocLine, runnable: list[str]) -> bool:
    """An inline span naming a command (`temponas latency fit`, `temponas ...`) that starts
    a line which is run."""
    words = d.key.split()
    if words and words[-1] == "...":
        words = words[:-1]
    return any(k.split()[: len(words)] == words for k in runnable)


@dataclass
class Walk:
    """Runs documented lines in one workspace, each at most once (dependencies first)."""

    ws: Path
    ray: str
    env: dict
    case_of: Callable[[str], Case]            # documented line -> how it runs
    smoke: Path                               # the config of the small search run
    done: dict = field(default_factory=dict)  # key -> combined output

    def context(self) -> dict[str, str]:
        ctx = {"ws": str(self.ws), "root": str(ROOT), "smoke": str(self.smoke), "ray": self.ray,
               "bin": str(BIN), "py": sys.executable}
        for front in sorted((self.ws / "runs").glob("*/pareto.csv")):  # arch_id_<run>: a member
            with open(front, newline="") as f:
                row = next(csv.DictReader(f), None)
            if row:
                ctx[f"arch_id_{front.parent.name}"] = row["arch_id"]
        if "arch_id_smoke" in ctx:
            ctx["arch_id"] = ctx["arch_id_smoke"]
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ctx["port"] = str(s.getsockname()[1])
        return ctx

    def run(self, key: str) -> str:
        if key in self.done:
            return self.done[key]
        case = self.case_of(key)
        for dep in case.after:
            self.run(dep)
        if key.startswith("make "):
            out = self._make(key.split()[1], case)
        else:
            out = "".join(self._step(s.format(**self.context()), case) for s in case.steps)
        for want in case.expect:
            assert want in out, f"{key}: {want!r} not in the output:\n{out[-3000:]}"
        for f in case.files:
            assert (self.ws / f).exists(), f"{key}: {f} was not written"
        self.done[key] = out
        return out

    def _step(self, step: str, case: Case) -> str:
        argv = shlex.split(step)
        if case.server:
            return self._serve(argv, case.server)
        cwd = ROOT if case.cwd == "root" else self.ws
        if argv[0] == "temponas":
            return self._in_process(lambda: _cli_main(argv[1:]), step, cwd)
        if argv[0] == "python":
            return self._in_process(lambda: _run_python(argv[1:]), step, cwd)
        return self._subprocess(step.replace(".venv/bin/", f"{BIN}/"), cwd)

    def _in_process(self, fn, step: str, where: Path) -> str:
        out, err = io.StringIO(), io.StringIO()
        cwd = os.getcwd()
        os.chdir(where)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    rc = fn()
                except SystemExit as e:  # argparse, --help, scripts' sys.exit
                    rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        finally:
            os.chdir(cwd)
        assert rc in (0, None), f"{step}: exit {rc}\n{err.getvalue()[-3000:]}"
        return out.getvalue() + err.getvalue()

    def _subprocess(self, cmd: str, cwd: Path) -> str:
        p = subprocess.run(["bash", "-c", cmd], cwd=cwd, env=self.env, capture_output=True,
                           text=True, timeout=300)
        assert p.returncode == 0, f"{cmd}: exit {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
        return p.stdout + p.stderr

    def _make(self, target: str, case: Case) -> str:
        """The target's recipe as ``make -n`` prints it (the venv is not rebuilt: -o setup),
        with ``case.make_subs`` applied; each logical line runs as make would run it."""
        p = subprocess.run(["make", "-s", "-n", "-o", "setup", "-f", str(ROOT / "Makefile"), target,
                            f"BIN={BIN}"], cwd=ROOT, env=self.env, capture_output=True, text=True)
        assert p.returncode == 0, f"make -n {target}: {p.stderr}"
        recipe = p.stdout.replace("\\\n", " ")
        for old, new in case.make_subs:
            assert old in recipe, f"make {target}: {old!r} not in its recipe:\n{recipe}"
            recipe = recipe.replace(old, new.format(**self.context()))
        cwd = ROOT if case.cwd == "root" else self.ws
        return "".join(self._subprocess(line, cwd) for _ in range(case.repeat)
                       for line in recipe.splitlines() if line.strip())

    def _serve(self, argv: list[str], path: str) -> str:
        argv = [str(BIN / a.removeprefix(".venv/bin/")) if a.startswith(".venv/bin/") else a
                for a in argv]
        port = argv[argv.index("--port") + 1]
        log = self.ws / f"{Path(argv[0]).name}.log"
        with open(log, "w") as f:
            proc = subprocess.Popen(argv, cwd=self.ws, env=self.env, stdout=f, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                        return r.read().decode()
                except OSError:
                    assert proc.poll() is None, f"{argv}: exited {proc.returncode}: {log.read_text()}"
                    assert time.monotonic() < deadline, f"{argv}: no answer on port {port}"
                    time.sleep(0.3)
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def _cli_main(argv: list[str]) -> int:
    from experiments.cli import main

    return main(argv)


def _run_python(argv: list[str]) -> int:
    """``python -m MOD ARGS`` / ``python FILE ARGS`` in this process (``runpy``)."""
    old = sys.argv[:]
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            with warnings.catch_warnings():  # the module may be imported already: run it afresh
                warnings.filterwarnings("ignore", "'.*' found in sys.modules", RuntimeWarning)
                runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(argv)
            runpy.run_path(argv[0], run_name="__main__")
    finally:
        sys.argv = old
    return 0
