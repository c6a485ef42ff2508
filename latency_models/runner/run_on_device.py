#!/usr/bin/env python3
"""Time every Core ML package of a temponas probe bundle on this Mac; write the measurement CSV.

Standalone: needs only Python 3.9+, numpy and coremltools (``pip install coremltools``) on
macOS. Copied into each bundle by ``temponas latency export-probes``.

    python run_on_device.py BUNDLE --compute-units cpu_and_ne [--runs 50] [--warmup 5]
                                   [--repeats 3] [--out measurements.csv] [--device NAME]

For each package: compile ``.mlpackage -> .mlmodelc`` (timed), load the compiled model with the
requested compute units (timed separately: the first load specializes for the Neural Engine),
warm up, then time ``--runs`` predictions one by one and record the median, p10 and p90.
``--repeats`` visits every package again in a new shuffled order (interleaved), which gives
the noise floor. OS, chip, model identifier and tool versions go into every row. Core ML falls
back from the Neural Engine to the CPU silently: the compute units you ASKED for are recorded.

``--template out.csv`` writes the rows without timing (``latency_ms`` empty) for filling in from
Xcode's Core ML Performance Report on an iPhone (open each ``.mlpackage`` in Xcode ->
Performance -> choose the device; copy the median prediction time).
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# MUST equal latency_models.measurements.COLUMNS (checked by temponas' tests).
COLUMNS = [
    "schema_version", "device", "backend", "compute_units", "precision", "os", "chip", "versions",
    "threads", "scope", "probe_id", "arch_id", "arch_json", "backbone_json",
    "op", "kind", "in_channels", "out_channels", "skip_channels", "batch", "frames", "height",
    "width", "heads", "depth", "kernel_t", "kernel_s", "context_tokens", "context_dim", "temb_dim",
    "norm_groups", "self_attn", "linear_projection",
    "latency_ms", "p10_ms", "p90_ms", "runs", "warmup", "repeat", "load_ms", "compile_ms", "ref_ms",
    "timestamp",
]
COMPUTE_UNITS = {"all": "ALL", "cpu_only": "CPU_ONLY", "cpu_and_gpu": "CPU_AND_GPU",
                 "cpu_and_ne": "CPU_AND_NE"}


# ---- the three calls that touch Core ML (replaceable in tests; Linux cannot run them) --------
def compile_package(package: Path) -> tuple[Path, float]:
    """Compile ``.mlpackage`` to ``.mlmodelc``; returns its path and the compile time (ms)."""
    import coremltools as ct

    t0 = time.perf_counter()
    compiled = ct.utils.compile_model(str(package))
    return Path(compiled), (time.perf_counter() - t0) * 1e3


def load_model(compiled: Path, compute_units: str):
    """Load a compiled model with the given compute units (keyword argument); returns it and ms."""
    import coremltools as ct

    cu = getattr(ct.ComputeUnit, COMPUTE_UNITS[compute_units])
    t0 = time.perf_counter()
    model = ct.models.CompiledMLModel(str(compiled), compute_units=cu)
    return model, (time.perf_counter() - t0) * 1e3


def predict_once(model, inputs: dict) -> None:
    model.predict(inputs)


# ---- measurement -----------------------------------------------------------------------------
def make_inputs(entry: dict, seed: int = 0) -> dict:
    import numpy as np

    rng = np.random.default_rng(seed)
    out = {}
    for spec in entry["inputs"]:
        shape = tuple(spec["shape"])
        if spec["name"] == "timesteps":
            out[spec["name"]] = (rng.random(shape) * 1000).astype(np.float32)
        else:
            out[spec["name"]] = rng.standard_normal(shape).astype(np.float32)
    return out


def time_predictions(model, inputs: dict, runs: int, warmup: int) -> tuple[float, float, float]:
    import numpy as np

    for _ in range(warmup):
        predict_once(model, inputs)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        predict_once(model, inputs)
        times.append((time.perf_counter_ns() - t0) / 1e6)
    p10, med, p90 = np.percentile(np.asarray(times), [10, 50, 90])
    return float(med), float(p10), float(p90)


def _sysctl(key: str) -> str:
    try:
        return subprocess.run(["sysctl", "-n", key], capture_output=True, text=True,
                              timeout=5, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def system_info() -> dict:
    import numpy as np

    try:
        import coremltools as ct
        ctv = ct.__version__
    except ImportError:
        ctv = "missing"
    mac = platform.mac_ver()[0]
    return {"os": f"macOS {mac}" if mac else f"{platform.system()} {platform.release()}",
            "chip": _sysctl("machdep.cpu.brand_string") or platform.processor() or platform.machine(),
            "model": _sysctl("hw.model") or platform.node(),
            "versions": f"coremltools={ctv};numpy={np.__version__};python={platform.python_version()}"}


def base_row(entry: dict, info: dict, device: str, compute_units: str, precision: str) -> dict:
    row = dict.fromkeys(COLUMNS, "")
    row.update(schema_version=1, device=device, backend="coreml", compute_units=compute_units,
               precision=precision, os=info["os"], chip=info["chip"], versions=info["versions"],
               threads=0, scope=entry["scope"], probe_id=entry["probe_id"])
    if entry["scope"] == "block":
        row.update(entry["signature"])
    else:
        row["arch_id"] = entry["arch_id"]
        row["arch_json"] = json.dumps(entry["arch"], sort_keys=True, separators=(",", ":"))
        row["backbone_json"] = json.dumps(entry["backbone"], sort_keys=True)
    return row


def write_csv(path: Path, rows: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _progress(i: int, n: int, what: str) -> None:
    sys.stderr.write(f"\r[{i}/{n}] {what[:60]:60s}")
    sys.stderr.flush()
    if i == n:
        sys.stderr.write("\n")


def run(bundle: Path, compute_units: str, runs: int, warmup: int, repeats: int, out: Path,
        device: str | None, seed: int = 0, template: bool = False) -> list:
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    if manifest.get("format") != "temponas-probe-bundle":
        raise SystemExit(f"{bundle}/manifest.json: not a temponas probe bundle")
    if manifest.get("csv_columns") and list(manifest["csv_columns"]) != COLUMNS:
        raise SystemExit("this runner's CSV columns differ from the bundle's; re-export the bundle")
    info = system_info()
    dev = device or info["model"]
    precision = manifest.get("precision", "fp16")
    entries = manifest["probes"]
    rows = []
    if template:
        for e in entries:
            rows.append(base_row(e, info, dev, compute_units, precision))
        write_csv(out, rows)
        return rows
    rng = random.Random(seed)
    loaded: dict = {}
    order = [(r, i) for r in range(repeats) for i in rng.sample(range(len(entries)), len(entries))]
    for k, (rep, i) in enumerate(order, 1):
        e = entries[i]
        _progress(k, len(order), f"{e['probe_id']} {e.get('op', 'network')} (repeat {rep})")
        if i not in loaded:
            compiled, compile_ms = compile_package(bundle / e["package"])
            model, load_ms = load_model(compiled, compute_units)
            loaded = {i: (model, load_ms, compile_ms)}  # keep one model in memory at a time
        model, load_ms, compile_ms = loaded[i]
        med, p10, p90 = time_predictions(model, make_inputs(e, seed), runs, warmup)
        row = base_row(e, info, dev, compute_units, precision)
        row.update(latency_ms=f"{med:.6g}", p10_ms=f"{p10:.6g}", p90_ms=f"{p90:.6g}", runs=runs,
                   warmup=warmup, repeat=rep, load_ms=f"{load_ms:.6g}", compile_ms=f"{compile_ms:.6g}",
                   timestamp=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
        rows.append(row)
        if k % 10 == 0:
            write_csv(out, rows)  # keep partial results if interrupted
    write_csv(out, rows)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Time a temponas Core ML probe bundle on this Mac.")
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--compute-units", default="cpu_and_ne", choices=sorted(COMPUTE_UNITS))
    ap.add_argument("--runs", type=int, default=50, help="timed predictions per package (median)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=1, help="interleaved repeats (noise floor)")
    ap.add_argument("--device", help="device name for the CSV (default: hw.model, e.g. Mac14,2)")
    ap.add_argument("--out", type=Path, help="CSV path (default: BUNDLE/measurements_<units>.csv)")
    ap.add_argument("--template", action="store_true",
                    help="write rows without timing, to fill in from Xcode performance reports")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if not (a.bundle / "manifest.json").exists():
        ap.error(f"{a.bundle}: no manifest.json (is this a temponas probe bundle?)")
    if a.runs < 1 or a.warmup < 0 or a.repeats < 1:
        ap.error("--runs and --repeats must be >= 1, --warmup >= 0")
    out = a.out or a.bundle / f"measurements_{a.compute_units}.csv"
    if not a.template and platform.system() != "Darwin" and predict_once is _REAL_PREDICT:
        ap.error("Core ML predictions need macOS (use --template to fill in Xcode numbers)")
    rows = run(a.bundle, a.compute_units, a.runs, a.warmup, a.repeats, out, a.device, a.seed,
               a.template)
    print(f"wrote {len(rows)} rows to {out}")
    return 0


_REAL_PREDICT = predict_once

if __name__ == "__main__":
    sys.exit(main())
