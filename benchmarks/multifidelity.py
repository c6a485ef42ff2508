"""Multi-fidelity search: does successive halving find the full-budget front for less compute?

Runs the same short-training search twice per search seed on the ``snapgen_v`` space at the
audited proxy scale (``experiments/configs/snapgen_v_short_train.yaml``: width x0.0625, 8
frames of 8x8 latents, 30 training steps, evaluator seeds 0 and 1, latency <= 1000 ms, memory
<= 4096 MB, the default sampler):

* ``full``: every candidate trained to the full 30 steps (``search.pruner: none``);
* ``sh``: successive halving over a budget ladder (Optuna's SuccessiveHalvingPruner on the
  rung studies, candidates competing within predicted-latency buckets; each rung continues
  from the rung below's checkpoint).

Both arms count the same number of candidates (``n_trials``), start a fresh local Ray (worker
start-up is paid alike) and share only the pretrained image backbone (trained once before, not
counted). Compute = the evaluation tasks' CPU seconds (``evaluations.jsonl``: process time of
each task, setup and validation included), robust to the load of this shared machine.
Hypervolume: feasible candidates that reached the top budget, quality = the 30-step score (the
mean over evaluator seeds), reference point = (quality 0 = the image-only model, latency = the
1000 ms budget); the same architecture scores the same in both arms (a laddered score equals
straight training, tests/evaluators/test_ev_short_train.py).

``hv_fraction`` = sh's final hypervolume / full's; ``compute_fraction`` = sh's CPU seconds /
full's (mean over search seeds; per seed in ``per_seed``). Targets: hv_fraction >= 0.97 with
compute_fraction <= 0.40. The ladder (min budget, reduction factor, latency buckets) was chosen
by an offline replay of successive halving on the rung scores of random architectures
(``TUNING``: other architectures than any search here proposes, see ``chosen_on``).

    python benchmarks/multifidelity.py [--quick] [--json] [--seeds 0,1,2] [--n-trials 48]
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments.config import PrunerConfig, load_config
from experiments.hypervolume import hypervolume, pareto_mask

CONFIG = ROOT / "experiments" / "configs" / "snapgen_v_short_train.yaml"
#: the ladder of the sh arm: rungs 2, 10, 30 steps; SH keeps ~1/5 per rung within each of 2
#: latency buckets (+ one for candidates over the latency budget)
LADDER = PrunerConfig("successive_halving", min_budget=2, reduction_factor=5, latency_buckets=2)
TUNING = ("offline replay of SuccessiveHalvingPruner on 20 arrival orders of 80 random "
          "architectures (sample seeds 11 and 23 of the same space) scored at 2-30 steps, "
          "evaluator seed 0; see benchmarks/results/multifidelity.json 'tuning'")
TARGETS = {"hv_fraction": 0.97, "compute_fraction": 0.40}


def arm_config(base, ladder: PrunerConfig, seed: int, n_trials: int, eval_seeds: tuple[int, ...]):
    ev = replace(base.evaluator, seeds=tuple(eval_seeds),
                 options={**dict(base.evaluator.options), "cache_results": False})
    search = replace(base.search, sampler="tpe", sampler_options={}, n_trials=n_trials,
                     workers=2, seed=seed, pruner=ladder)
    return replace(base, name=f"mf_{arm_name(ladder)}_s{seed}", evaluator=ev, search=search)


def arm_name(ladder: PrunerConfig) -> str:
    if ladder.name == "none":
        return "full"
    return (f"sh_m{ladder.min_budget}_r{ladder.reduction_factor}_k{ladder.latency_buckets}"
            f"_v{ladder.rung_val_fraction:g}")


def parse_ladders(text: str) -> list[PrunerConfig]:
    """``"2,5,2,0.25;2,15,4,1"`` -> successive-halving ladders (min_budget, reduction_factor,
    latency buckets, rung_val_fraction)."""
    out = []
    for part in text.split(";"):
        m, r, k, f = part.split(",")
        out.append(PrunerConfig("successive_halving", int(m), int(r), int(k), float(f)))
    return out


def curve(run_dir: Path, cfg) -> dict:
    """Hypervolume of the feasible top-budget candidates vs cumulative evaluation CPU seconds,
    in the order evaluations finished."""
    from experiments.cache import read_records
    from experiments.rundir import open_run

    run = open_run(run_dir)
    lat = {t.user_attrs["arch_id"]: t.user_attrs["candidate"]["latency_ms"]
           for t in run.study.trials if "candidate" in t.user_attrs}
    top, seeds = cfg.evaluator.budget, set(cfg.evaluator.seeds)
    budget_ms = cfg.constraints.latency_budget_ms
    ref = np.array([0.0, budget_ms])
    cpu, scores, pts, xs, hvs = 0.0, {}, [], [0.0], [0.0]
    for r in read_records(run_dir):
        cpu += float(r.get("cpu_s", 0.0))
        if r["budget"] == top:
            scores.setdefault(r["arch_id"], {})[r["seed"]] = r["value"]
            s = scores[r["arch_id"]]
            if set(s) == seeds:
                q, lt = float(np.mean(list(s.values()))), lat[r["arch_id"]]
                if q > 0 and lt < budget_ms:
                    pts.append((-q, lt))
        xs.append(cpu)
        a = np.array(pts) if pts else np.zeros((0, 2))
        hvs.append(hypervolume(a[pareto_mask(a)], ref) if len(a) else 0.0)
    front = np.array(pts)[pareto_mask(np.array(pts))].tolist() if pts else []
    return {"cpu_s": xs, "hv": hvs, "final_hv": hvs[-1], "total_cpu_s": cpu,
            "evaluations": len(xs) - 1, "top_budget_candidates": len(scores),
            "front": front}


def run_arm(base, ladder: PrunerConfig, seed: int, n_trials: int, eval_seeds, tmp: Path) -> dict:
    from experiments.runner import SearchOptions, run_search

    cfg = arm_config(base, ladder, seed, n_trials, eval_seeds)
    arm = arm_name(ladder)
    run_dir = tmp / cfg.name
    t0 = time.perf_counter()
    s = run_search(cfg, SearchOptions(out=str(run_dir), progress=True, write_plots=False))
    out = curve(run_dir, cfg)
    out.update(wall_s=time.perf_counter() - t0, complete=s.complete, pruned=s.pruned,
               over_memory=s.over_memory, duplicates=s.duplicates, failed=s.failed)
    print(f"seed {seed} {arm}: HV {out['final_hv']:.3f} with {out['total_cpu_s']:.0f} CPU-s "
          f"({out['evaluations']} evaluations, {s.complete} complete, {s.pruned} pruned, "
          f"{out['wall_s']:.0f} s)", file=sys.stderr)
    return out


def _at_cpu(c: dict, cpu_s: float) -> float:
    """A run's hypervolume when it had spent ``cpu_s`` CPU seconds."""
    i = int(np.searchsorted(np.asarray(c["cpu_s"]), cpu_s, side="right")) - 1
    return float(c["hv"][max(i, 0)])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="12 trials, seed 0, evaluator seed 0")
    ap.add_argument("--json", action="store_true", help="write benchmarks/results/multifidelity.json")
    ap.add_argument("--seeds", default=None, help="search seeds (default 0,1,2; quick 0)")
    ap.add_argument("--n-trials", type=int, default=None, help="candidates per search (default 48)")
    ap.add_argument("--eval-seeds", default=None, help="evaluator seeds (default the config's 0,1)")
    ap.add_argument("--tune", default=None, metavar="M,R,K,F;...",
                    help="tuning mode: compare these ladders (min_budget, reduction_factor, "
                         "latency buckets, rung_val_fraction) against one full-budget arm per "
                         "seed; writes "
                         "benchmarks/results/multifidelity_tuning.json with --json")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    n_trials = args.n_trials or (12 if args.quick else 48)
    base = load_config(CONFIG)
    eval_seeds = tuple(int(s) for s in args.eval_seeds.split(",")) if args.eval_seeds else (
        (0,) if args.quick else tuple(base.evaluator.seeds))
    ladders = parse_ladders(args.tune) if args.tune else [LADDER]
    from evaluators import create_evaluator

    t0 = time.perf_counter()
    ev = create_evaluator(base.evaluator.name, base.backbone_spec, base.evaluator.options)
    ev.image_only_loss(4)  # trains (or loads) the pretrained image backbone: one time, not counted
    t_pre = time.perf_counter() - t0
    per_seed, runs = [], {}
    with tempfile.TemporaryDirectory(prefix="temponas-mf-") as td:
        for seed in seeds:
            full = run_arm(base, PrunerConfig(), seed, n_trials, eval_seeds, Path(td))
            runs[str(seed)] = {"full": full}
            for lad in ladders:
                sh = run_arm(base, lad, seed, n_trials, eval_seeds, Path(td))
                runs[str(seed)][arm_name(lad)] = sh
                per_seed.append({
                    "seed": seed, "ladder": arm_name(lad),
                    "hv_fraction": sh["final_hv"] / full["final_hv"],
                    "compute_fraction": sh["total_cpu_s"] / full["total_cpu_s"],
                    "full_hv_at_sh_compute": _at_cpu(full, sh["total_cpu_s"]) / full["final_hv"]})
                print(json.dumps(per_seed[-1]), file=sys.stderr)
    if args.tune:
        return _write_tuning(args, seeds, n_trials, eval_seeds, ladders, per_seed, runs)
    hv_f = float(np.mean([p["hv_fraction"] for p in per_seed]))
    cf = float(np.mean([p["compute_fraction"] for p in per_seed]))
    result = {
        "benchmark": "multifidelity", "quick": args.quick, "config": str(CONFIG.relative_to(ROOT)),
        "space_size": base.search_space.size(), "proxy_scale": dict(base.evaluator.options["scale"]),
        "top_budget": base.evaluator.budget, "evaluator_seeds": list(eval_seeds),
        "sampler": "tpe", "n_trials": n_trials, "search_seeds": seeds,
        "ladder": {"pruner": LADDER.name, "min_budget": LADDER.min_budget,
                   "reduction_factor": LADDER.reduction_factor,
                   "latency_buckets": LADDER.latency_buckets,
                   "rung_val_fraction": LADDER.rung_val_fraction},
        "chosen_on": TUNING,
        "hv_fraction": hv_f, "compute_fraction": cf,
        "hv_fraction_min": float(min(p["hv_fraction"] for p in per_seed)),
        "compute_fraction_max": float(max(p["compute_fraction"] for p in per_seed)),
        "per_seed": per_seed,
        "hypervolume_reference": "quality 0 (image-only model), latency = the 1000 ms budget",
        "compute": "CPU seconds of every evaluation task (process time: model build, training, "
                   "validation); the one-time image-backbone pretraining is not counted",
        "pretrain_or_load_s": t_pre,
        "targets": TARGETS,
        "pass": bool(hv_f >= TARGETS["hv_fraction"] and cf <= TARGETS["compute_fraction"]),
        "runs": runs, "machine": f"{os.cpu_count()} cores (shared)",
        "load_average_1m_at_end": os.getloadavg()[0],
    }
    print(json.dumps({k: result[k] for k in ("hv_fraction", "compute_fraction", "hv_fraction_min",
                                             "compute_fraction_max", "per_seed", "pass")}, indent=1))
    if args.json:
        from common.fsio import atomic_write_json

        out = ROOT / "benchmarks" / "results" / ("multifidelity_quick.json" if args.quick
                                                 else "multifidelity.json")
        tuning = ROOT / "benchmarks" / "results" / "multifidelity_tuning.json"
        if tuning.exists():
            result["tuning"] = json.loads(tuning.read_text())
        atomic_write_json(out, result)
        _plot(result, out.with_suffix(".png"))
        print(f"wrote {out}", file=sys.stderr)
    return 0


def _write_tuning(args, seeds, n_trials, eval_seeds, ladders, per_seed, runs) -> int:
    by = {}
    for lad in ladders:
        rows = [p for p in per_seed if p["ladder"] == arm_name(lad)]
        by[arm_name(lad)] = {"hv_fraction": float(np.mean([p["hv_fraction"] for p in rows])),
                             "compute_fraction": float(np.mean([p["compute_fraction"] for p in rows]))}
    out = {"tuning_seeds": seeds, "n_trials": n_trials, "evaluator_seeds": list(eval_seeds),
           "ladders": by, "per_seed": per_seed,
           "runs": {s: {a: {k: c[k] for k in ("final_hv", "total_cpu_s", "evaluations",
                                                "complete", "pruned")}
                        for a, c in r.items()} for s, r in runs.items()}}
    print(json.dumps(by, indent=1))
    if args.json:
        from common.fsio import atomic_write_json

        atomic_write_json(ROOT / "benchmarks" / "results" / "multifidelity_tuning.json", out)
    return 0


def _plot(result: dict, path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from common.fsio import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, arms in enumerate(result["runs"].values()):
        for arm, c in arms.items():
            full = arm == "full"
            label = None if i else ("full budget (30 steps)" if full else
                                    "successive halving " + str(rung_ladder(result)))
            color = "tab:gray" if full else "tab:blue"
            ax.step(c["cpu_s"], c["hv"], where="post", c=color, alpha=0.8, lw=1.3, label=label)
            ax.plot(c["cpu_s"][-1], c["hv"][-1], "o", c=color, ms=5)
    ax.set_xlabel("evaluation CPU seconds")
    ax.set_ylabel("hypervolume (quality gain x latency below 1000 ms)")
    ax.set_title(f"short-training search, {result['n_trials']} candidates, seeds "
                 f"{result['search_seeds']}: hv_fraction {result['hv_fraction']:.3f}, "
                 f"compute_fraction {result['compute_fraction']:.2f}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def rung_ladder(result: dict) -> list[int]:
    from experiments.ladder import rung_budgets

    lad = result["ladder"]
    return rung_budgets(lad["min_budget"], lad["reduction_factor"], result["top_budget"])


if __name__ == "__main__":
    sys.exit(main())
