"""Issue 12 acceptance, measured: a ``short_train`` search on your model and clips, twice.

A tiny random SD-style pipeline (UNet2DConditionModel, AutoencoderKL, CLIP text model, saved
with ``save_pretrained``) and 12 mp4 clips written with PyAV (``tests/tiny_media.py``, the same
world and config as ``tests/evaluators/test_ev_your_model_e2e.py``); ``temponas search CONFIG``
runs as the user runs it (its own process, its own local Ray), then again into a new run
folder with the same cache. Per repetition (a fresh cache each): wall and CPU seconds of both
runs, and what the data cache's event log says was encoded / reused. Target: each run under
3 minutes; the second run encodes nothing. CPU = user + sys of the command and the processes it
waited for (Ray's raylet and workers, when they were reaped before it exited). The machine is
shared: the load average is recorded.

    python benchmarks/your_model_e2e.py [--repeats N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import yaml
from tiny_media import acceptance_config, tiny_pipeline, write_clips

from common.fsio import atomic_write_json, read_jsonl

OUT = ROOT / "benchmarks" / "results" / "your_model_e2e.json"


def search(cfg: Path, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "RAY_USAGE_STATS_ENABLED": "0"}
    r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "experiments.cli", "search", str(cfg), "--out", str(out),
                        "--no-progress"], env=env, capture_output=True, text=True)
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode:
        raise SystemExit(f"temponas search failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return {"wall_s": round(wall, 2), "cpu_s": round(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime, 2),
            "summary": p.stdout.strip().splitlines()[0]}


def events(cache: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for d in sorted((cache / "data").iterdir()):
        if (d / "events.jsonl").exists():
            out.setdefault(d.name.split("-")[0], []).extend(r for _, r in read_jsonl(d / "events.jsonl"))
    return out


def counts(evs: dict[str, list[dict]], start: dict[str, int]) -> dict[str, dict[str, int]]:
    return {k: {"uses": len(v[start.get(k, 0):]), "encoded": sum(e["encoded"] for e in v[start.get(k, 0):]),
                "reused": sum(e["reused"] for e in v[start.get(k, 0):])} for k, v in evs.items()}


def repetition(work: Path, model: str, manifest: str, i: int) -> dict:
    cache = work / f"cache{i}"
    cfg = work / f"your_model{i}.yaml"
    cfg.write_text(yaml.safe_dump(acceptance_config(model, manifest, str(cache)), sort_keys=False))
    first = search(cfg, work / f"run{i}a")
    ev1 = events(cache)
    second = search(cfg, work / f"run{i}b")
    first["data_cache"] = counts(ev1, {})
    second["data_cache"] = counts(events(cache), {k: len(v) for k, v in ev1.items()})
    return {"first": first, "second": second}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true", help=f"write {OUT.relative_to(ROOT)}")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="temponas_e2e_") as tmp:
        work = Path(tmp)
        model = tiny_pipeline(work / "sd_tiny")
        manifest = write_clips(work / "clips", n=12)
        load0 = os.getloadavg()
        reps = []
        for i in range(args.repeats):
            reps.append(repetition(work, model, manifest, i))
            r = reps[-1]
            print(f"rep {i}: run 1 {r['first']['wall_s']:.1f} s wall / {r['first']['cpu_s']:.1f} s CPU, "
                  f"encoded {r['first']['data_cache']}; run 2 {r['second']['wall_s']:.1f} s wall / "
                  f"{r['second']['cpu_s']:.1f} s CPU, encoded {r['second']['data_cache']}", flush=True)
    med = {run: {k: statistics.median(r[run][k] for r in reps) for k in ("wall_s", "cpu_s")}
           for run in ("first", "second")}
    result = {
        "what": "temponas search of the issue-12 acceptance config (tests/tiny_media.py): 12 mp4 "
                "clips, tiny UNet/VAE/CLIP, short_train, 4 trials, 1 worker; run 2 = same config, "
                "new run folder, same cache",
        "target": {"wall_s_per_run": 180, "run2_encoded": 0},
        "median": med, "max_wall_s": max(max(r["first"]["wall_s"], r["second"]["wall_s"]) for r in reps),
        "run2_encoded_total": sum(v["encoded"] for r in reps for v in r["second"]["data_cache"].values()),
        "repetitions": reps, "loadavg_start": [round(x, 2) for x in load0],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    print(json.dumps({k: result[k] for k in ("median", "max_wall_s", "run2_encoded_total")}))
    if args.json:
        atomic_write_json(OUT, result, indent=1)
        print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
