"""``temponas latency fitset`` and ``temponas latency build-priors``: the published Apple Core ML
latencies behind the shipped device priors, and the one command that rebuilds them
(:mod:`latency_models.ane`). :func:`validation_line` is what ``latency devices`` shows."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from experiments.cli._base import Command


def validation_line(meta: Mapping[str, Any]) -> str:
    """One line of a prior's cross-family validation numbers ('' for other models)."""
    v = meta.get("validation") or {}
    if not v:
        return ""
    fo = meta.get("fitted_on") or {}
    own = fo.get("rows_on_this_chip")
    return (f"{'':14s} cost model: LOFO median |err| {v['lofo_median_abs_pct']:.1f}% (p90 "
            f"{v['lofo_p90_abs_pct']:.0f}%), 90% interval coverage {v['interval_coverage_90']:.2f}, "
            f"SD-2.1 from a fit without SD {v['sd_excluded_median_abs_pct']:.1f}%; "
            f"{own} published rows on this chip" + (" (borrowed)" if fo.get("borrowed") else ""))


class LatencyFitset(Command):
    """``temponas latency fitset [--excluded] [--json]``."""

    help = "the published Apple latencies behind the device priors"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--excluded", action="store_true",
                       help="only the rows left out of the fit (with why)")
        p.add_argument("--json", action="store_true")

    def take_action(self, args: argparse.Namespace) -> int:
        from latency_models.ane import load_fitset

        fs = load_fitset(need_features=False)
        rows = [r for r in fs.rows if not args.excluded or not r.include]
        if args.json:
            json.dump([{"row_id": r.row_id, "family": r.family, "model": r.model,
                        "device": r.device, "chip": r.chip, "os": r.os, "precision": r.precision,
                        "source": r.source, "latency_ms": r.latency_ms, "include": r.include,
                        "reason": r.reason, "url": fs.sources[r.source]["url"]} for r in rows],
                      sys.stdout, indent=1)
            sys.stdout.write("\n")
            return 0
        print(f"{'row':5s} {'family':18s} {'model':22s} {'device':13s} {'prec':6s} {'ms':>8s}  source")
        for r in rows:
            print(f"{r.row_id:5s} {r.family:18s} {r.model:22s} {r.device:13s} {r.precision:6s} "
                  f"{r.latency_ms:8.3f}  {r.source}" + ("" if r.include else f"  EXCLUDED: {r.reason}"))
        print(f"{len(fs.included)} rows in the fit, {len(fs.excluded)} excluded "
              f"(latency_models/ane/data/measurements.csv; sources.csv has the URLs)")
        return 0


class LatencyBuildPriors(Command):
    """``temponas latency build-priors [--out DIR]``."""

    help = "refit the Neural Engine cost model and rewrite the device priors"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--out", help="profile folder (default: the shipped latency_models/profiles)")
        p.add_argument("--no-progress", action="store_true")

    def take_action(self, args: argparse.Namespace) -> int:
        from tqdm import tqdm

        from latency_models.ane import load_fitset
        from latency_models.ane.priors import PROFILE_DIR, build_profiles

        fs = load_fitset()
        n = len(fs.families()) + len({r.chip for r in fs.included})
        with tqdm(total=n, desc="hold-out fits", unit="fit", disable=args.no_progress) as bar:
            docs = build_profiles(Path(args.out or PROFILE_DIR), progress=lambda g: bar.update())
        for name, d in docs.items():
            fo = d["metadata"]["fitted_on"]
            print(f"{name:14s} {d['metadata']['chip']:8s} {fo['rows_on_this_chip']:3d} rows on chip; "
                  f"SD-2.1 published {fo['published_sd21_ms']} predicted {fo['predicted_sd21_ms']:.0f} ms")
        print(f"wrote {len(docs)} profiles to {args.out or PROFILE_DIR}")
        return 0
