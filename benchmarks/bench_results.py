"""Where a benchmark writes its results: a full run to ``benchmarks/results/`` (committed), a
``--quick`` smoke run to ``benchmarks/results/quick/`` (gitignored), so running a benchmark
never changes a committed file; ``--out DIR`` puts either anywhere else."""

from __future__ import annotations

import argparse
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
QUICK = RESULTS / "quick"


def add_out_argument(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--out", default=None,
                    help=f"where --json writes (default {RESULTS.relative_to(RESULTS.parents[1])}"
                         f"/, with --quick {QUICK.relative_to(RESULTS.parents[1])}/, untracked)")


def results_dir(quick: bool, out: str | Path | None = None) -> Path:
    """The directory a run writes to (created)."""
    d = Path(out) if out is not None else QUICK if quick else RESULTS
    d.mkdir(parents=True, exist_ok=True)
    return d
