"""Driver overhead and Ray speed-up of a temponas search.

1. ``overhead_ms_per_trial``: wall time per trial of ``run_search`` (the temponas driver: suggest,
   analytic memory, latency prediction, user attrs, evaluation cache, a Ray task per trial,
   tell, journal storage, periodic CSVs) minus that of a plain Optuna ask/tell loop (same space,
   sampler, journal storage) calling a trivial evaluator in-process. Target <= 20 ms.
2. ``ray_speedup``: wall time of a search whose evaluations are ~1 s of CPU-bound work with
   1 Ray worker / with 2 workers (same trials, Ray and worker processes warmed up). Target
   >= 1.7 on 2 cores. The machine is shared: the load average is recorded with the result.

    python benchmarks/overhead.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT), str(BENCH)]
# Ray workers import the benchmark evaluators from here
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(BENCH), str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from bench_results import add_out_argument, results_dir

from experiments.config import load_config
from experiments.runner import SearchOptions, run_search
from experiments.study import make_sampler, open_storage

SMOKE = ROOT / "experiments" / "configs" / "smoke.yaml"


def _cfg(evaluator: str, options: dict, n_trials: int, workers: int, seed: int = 0):
    cfg = load_config(SMOKE)
    return replace(cfg, evaluator=replace(cfg.evaluator, name=evaluator, options=options,
                                          timeout_s=120.0),
                   constraints=replace(cfg.constraints, memory_budget_mb=None,
                                       latency_budget_ms=None),
                   search=replace(cfg.search, sampler="random", sampler_options={},
                                  n_trials=n_trials, workers=workers, seed=seed))


def plain_loop(cfg, n_trials: int, run_dir: Path) -> float:
    """Seconds per trial of a plain Optuna ask/tell loop on journal storage."""
    import optuna
    from bench_evaluators import ConstantEvaluator

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = cfg.search_space
    ev = ConstantEvaluator(cfg.backbone_spec)
    study = optuna.create_study(study_name="plain", storage=open_storage(None, run_dir),
                                directions=["maximize", "minimize"],
                                sampler=make_sampler("random", {}, 0))
    t0 = time.perf_counter()
    for _ in range(n_trials):
        trial = study.ask()
        arch = space.suggest(trial)
        study.tell(trial, [ev.evaluate(arch).value, 0.0])
    return (time.perf_counter() - t0) / n_trials


def temponas_loop(cfg, run_dir: Path) -> tuple[float, object]:
    t0 = time.perf_counter()
    s = run_search(cfg, SearchOptions(out=str(run_dir), progress=False, write_plots=False))
    return (time.perf_counter() - t0) / cfg.search.n_trials, s


def raw_ray_speedup(iterations: int, n_tasks: int) -> float:
    """The same busy work as plain Ray tasks (no driver), 1 then 2 in flight: the speed-up the
    machine could give at that moment (a shared box may have less than 2 free cores)."""
    import ray
    from bench_evaluators import spin

    task = ray.remote(num_cpus=1)(spin)
    walls = {}
    for k in (1, 2):
        t0 = time.perf_counter()
        pending, submitted = [task.remote(iterations) for _ in range(k)], k
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            ray.get(done)
            if submitted < n_tasks:
                pending.append(task.remote(iterations))
                submitted += 1
        walls[k] = time.perf_counter() - t0
    return walls[1] / walls[2]


def calibrate(target_s: float = 1.0) -> int:
    from bench_evaluators import spin

    n = 200_000
    while True:
        t0 = time.process_time()
        spin(n)
        dt = time.process_time() - t0  # CPU time: robust to other users of the machine
        if dt > 0.2:
            return int(n * target_s / dt)
        n *= 2


def measure_overhead(tmp: Path, n_trials: int, reps: int) -> tuple[float, dict[int, float]]:
    """Median ms per trial of a plain Optuna loop and of the temponas driver (1 and 2 workers)."""
    import numpy as np

    plain, driver = [], []
    for r in range(reps):
        plain.append(plain_loop(_cfg("bench_evaluators:ConstantEvaluator", {}, n_trials, 1),
                                n_trials, tmp / f"plain{r}"))
        for w in (1, 2):
            per, s = temponas_loop(_cfg("bench_evaluators:ConstantEvaluator", {}, n_trials,
                                        w, seed=r), tmp / f"drv{r}w{w}")
            driver.append({"workers": w, "s_per_trial": per,
                           "evaluations": s.evaluations_run, "cache_hits": s.cache_hits})
        print(f"rep {r}: plain {plain[-1] * 1e3:.1f} ms/trial, temponas "
              + ", ".join(f"{d['workers']}w {d['s_per_trial'] * 1e3:.1f}" for d in driver[-2:])
              + " ms/trial", file=sys.stderr)
    plain_ms = float(np.median(plain) * 1e3)
    drv_ms = {w: float(np.median([d["s_per_trial"] for d in driver if d["workers"] == w]) * 1e3)
              for w in (1, 2)}
    return plain_ms, drv_ms


def measure_speedup(tmp: Path, n_busy: int, busy_reps: int) -> dict:
    """Interleaved 1-worker / 2-worker pairs of ~1 s CPU-bound evaluations: slow drifts of the
    shared machine's load hit both halves of a pair alike; the median pair is reported, next to
    the ceiling the machine allows right now (the same work as plain Ray tasks)."""
    import numpy as np

    iters = calibrate(1.0)
    pairs, raws, walls, loops = [], [], {1: [], 2: []}, {1: [], 2: []}
    for rep in range(busy_reps):
        raws.append(raw_ray_speedup(iters, n_busy))
        print(f"rep {rep}: raw Ray tasks, 2 vs 1 in flight: {raws[-1]:.2f}x", file=sys.stderr)
        lp = {}
        for w in (1, 2):
            cfg = _cfg("bench_evaluators:BusyEvaluator", {"iterations": iters}, n_busy, w,
                       seed=7 + rep)
            t0 = time.perf_counter()
            s = run_search(cfg, SearchOptions(out=str(tmp / f"busy{rep}w{w}"), progress=False,
                                              write_plots=False))
            walls[w].append(time.perf_counter() - t0)
            loops[w].append(s.loop_wall_s)
            lp[w] = s.loop_wall_s
            print(f"busy rep {rep}, {w} worker(s): {n_busy} trials ({s.evaluations_run} "
                  f"evaluations) in {walls[w][-1]:.1f} s (ask/evaluate/tell loop "
                  f"{loops[w][-1]:.1f} s)", file=sys.stderr)
        pairs.append(lp[1] / lp[2])
    return {"ray_speedup": float(np.median(pairs)),
            "ray_speedup_definition": "median over interleaved pairs of the ask/evaluate/tell loop "
                                      "wall time, 1 worker / 2 workers (excludes the fixed per-run "
                                      "setup and final report)",
            "ray_speedup_total_wall": float(np.median(walls[1]) / np.median(walls[2])),
            "raw_ray_speedup_same_time": float(np.median(raws)),
            "raw_ray_speedup_per_rep": raws, "ray_speedup_per_rep": pairs,
            "ray_busy_loop_s": loops, "ray_busy_wall_s": walls, "ray_busy_trials": n_busy,
            "ray_busy_repeats": busy_reps, "ray_busy_iterations": iters}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer trials and evaluations")
    ap.add_argument("--json", action="store_true", help="write benchmarks/results/overhead.json")
    add_out_argument(ap)
    args = ap.parse_args(argv)
    n_overhead = 100 if args.quick else 300
    n_busy = 8 if args.quick else 12
    busy_reps = 1 if args.quick else 3
    reps = 1 if args.quick else 3
    import ray

    from experiments.distributed import ensure_ray

    ensure_ray(None, 2)
    tmp = Path(tempfile.mkdtemp(prefix="temponas-overhead-"))
    try:
        # warm up: worker processes, imports
        run_search(_cfg("bench_evaluators:ConstantEvaluator", {}, 8, 2, seed=99),
                   SearchOptions(out=str(tmp / "warm"), progress=False, write_plots=False))
        plain_ms, drv_ms = measure_overhead(tmp, n_overhead, reps)
        speed = measure_speedup(tmp, n_busy, busy_reps)
        load = os.getloadavg()
    finally:
        ray.shutdown()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    overhead = {w: drv_ms[w] - plain_ms for w in (1, 2)}
    result = {
        "benchmark": "overhead",
        "overhead_ms_per_trial": overhead[2],
        "overhead_ms_per_trial_by_workers": overhead,
        "plain_optuna_ms_per_trial": plain_ms,
        "temponas_ms_per_trial_by_workers": drv_ms,
        "trials": n_overhead, "repeats": reps,
        "storage": "JournalStorage(JournalFileBackend) in both loops",
        "sampler": "random (both loops)",
        **speed,
        "targets": {"overhead_ms_per_trial": 20.0, "ray_speedup": 1.7},
        "pass": {"overhead": overhead[2] <= 20.0, "ray_speedup": speed["ray_speedup"] >= 1.7},
        "load_average_1_5_15": load,
        "quick": args.quick,
        "machine": f"{os.cpu_count()} cores, shared with other engineers' jobs",
    }
    print(json.dumps({k: result[k] for k in ("overhead_ms_per_trial", "plain_optuna_ms_per_trial",
                                             "temponas_ms_per_trial_by_workers", "ray_speedup",
                                             "raw_ray_speedup_same_time",
                                             "pass", "load_average_1_5_15")}, indent=2))
    if args.json:
        from common.fsio import atomic_write_json

        out = results_dir(args.quick, args.out) / ("overhead_quick.json" if args.quick else "overhead.json")
        atomic_write_json(out, result)
        print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
