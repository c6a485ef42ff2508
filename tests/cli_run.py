"""``temponas`` commands run in the test process (shared by the experiments and reliability tests)."""

from __future__ import annotations

import contextlib
import io


def cli(*argv: str) -> tuple[int, str, str]:
    """``temponas ARGV`` in this process: (exit code, stdout, stderr)."""
    from experiments.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(list(argv))
        except SystemExit as e:  # argparse
            rc = e.code if isinstance(e.code, int) else 1
    return rc, out.getvalue(), err.getvalue()
