"""Multi-fidelity search: does successive halving find the full-budget front for less compute?

Runs the same short-training search twice per search seed on the ``snapgen_v`` space at the
audited proxy scale (``experiments/configs/snapgen_v_short_train.yaml``: width x0.0625, 8
frames of 8x8 latents, 30 training steps, evaluator seeds 0 and 1, latency <= 1000 ms, memory
<= 4096 MB, the default sampler):

* ``full``: every candidate trained to the full 30 steps (``search.pruner: none``);
* ``sh``: successive halving over a budget ladder (Optuna's SuccessiveHalvingPruner on the
  rung studies, candidates competing within predicted-latency buckets; each rung continues
  from the rung below's checkpoint).

What is held equal (``HELD_EQUAL``): space, sampler and its seed, evaluator, constraints and
hypervolume reference. Not ``n_trials``: as Hyperband/ASHA are compared, the sh arm may propose
``--sh-factor`` x as many candidates and is read at ``--cap`` (0.40) x the full arm's training
CPU seconds, with the work in flight there counted at its upper bound (:func:`curve`). Both
arms start a fresh local Ray (worker start-up is paid alike) and share only the pretrained image
backbone (trained once before, not counted). Compute = the evaluation tasks' CPU seconds
(``evaluations.jsonl``: process time of each task, setup and validation included), robust to
the load of this shared machine. Hypervolume: feasible candidates that reached the top budget,
quality = the 30-step score (mean over evaluator seeds), reference point = (quality 0 = the
image-only model, latency = the 1000 ms budget); the same architecture scores the same in both
arms (a laddered score equals straight training, tests/evaluators/test_ev_short_train.py).

``hv_fraction`` = sh's hypervolume at the cap / full's final one; ``compute_fraction`` = sh's
CPU seconds there / full's (mean over search seeds with a bootstrap 95% interval; per seed in
``per_seed``, with the full arm's own hypervolume at the same compute and the compute each arm
needed to reach 0.97). Targets: hv_fraction >= 0.97 with compute_fraction <= 0.40. The ladder
is chosen with ``--tune`` on other search seeds (``TUNING``, ``multifidelity_tuning.json``).

    python benchmarks/multifidelity.py [--quick] [--json] [--seeds 0,1,2] [--n-trials 32]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # bench_results, also under runpy

from bench_results import RESULTS, add_out_argument, results_dir

from experiments.config import PrunerConfig, load_config
from experiments.hypervolume import hypervolume, pareto_mask
from experiments.ladder import rung_budgets

CONFIG = ROOT / "experiments" / "configs" / "snapgen_v_short_train.yaml"
#: the ladder of the sh arm: rungs 5 and 30 steps; SH keeps ~1/6 at rung 5 within each of 3
#: latency buckets (+ one for candidates over the latency budget); rung 5 scored on 1/4 of the
#: held-out batches. Chosen on tuning seed 100 (see TUNING)
LADDER = PrunerConfig("successive_halving", min_budget=5, reduction_factor=6, latency_buckets=3,
                      rung_val_fraction=0.25)
TUNING = ("search seed 100 (n_trials_full 32, evaluator seed 0, the same cap): five ladders, "
          "hv_fraction at the cap 0.636 for (min_budget, reduction_factor, buckets) = (2, 5, 2), "
          "(3, 10, 3) and (5, 6, 3) at val fraction 0.25 (the first candidates of every bucket "
          "are promoted and spend the cap), 0.0 with bootstrap_count 2-3 (nobody reaches the "
          "top rung within the cap); ties broken by the lower compute_fraction; "
          "benchmarks/results/multifidelity_tuning.json")
TARGETS = {"hv_fraction": 0.97, "compute_fraction": 0.40}
#: the sh arm runs on to this x its cap (so the work in flight at the cap is known)
STOP_BEYOND_CAP = 1.25
HELD_EQUAL = ("the space, the sampler (TPE) and its seed, the evaluator (scale, 30-step top "
              "budget, evaluator seeds), constraints and hypervolume reference; NOT n_trials: "
              "the full arm evaluates n_trials_full candidates, the sh arm may propose up to "
              "n_trials_sh_max and is read at cap x the full arm's CPU seconds (work in "
              "flight counted at its upper bound: curve()), as Hyperband/ASHA compare at equal compute")
COMPUTE_NOTE = ("CPU seconds of every evaluation task (process time: model build, training, "
                "validation), summed in the order evaluations finished; the one-time image-"
                "backbone pretraining and the driver process (its CPU is in runs.*.driver_cpu_s) "
                "are not counted")


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
            f"_v{ladder.rung_val_fraction:g}" + (f"_b{ladder.bootstrap_count}"
                                                 if ladder.bootstrap_count else ""))


def parse_ladders(text: str) -> list[PrunerConfig]:
    """``"2,5,2,0.25;2,15,4,1,3"`` -> successive-halving ladders (min_budget, reduction_factor,
    latency buckets, rung_val_fraction[, bootstrap_count])."""
    out = []
    for part in text.split(";"):
        m, r, k, f, *b = part.split(",")
        out.append(PrunerConfig("successive_halving", int(m), int(r), int(k), float(f),
                                int(b[0]) if b else 0))
    return out


def curve(run_dir: Path, cfg) -> dict:
    """Hypervolume of the feasible top-budget candidates vs cumulative evaluation CPU seconds,
    in the order evaluations finished. ``cpu_upper_s`` adds the work in flight when each
    evaluation finished, at its upper bound: the whole next evaluation of every other worker
    process (a Ray worker runs one task at a time, so that one was already running or not yet
    started)."""
    from experiments.cache import read_records
    from experiments.rundir import open_run

    run = open_run(run_dir)
    lat = {t.user_attrs["arch_id"]: t.user_attrs["candidate"]["latency_ms"]
           for t in run.study.trials if "candidate" in t.user_attrs}
    top, seeds = cfg.evaluator.budget, set(cfg.evaluator.seeds)
    ref = hv_reference(cfg)
    recs = read_records(run_dir)
    inflight = _inflight_cpu(recs)
    cpu, scores, pts, seen = 0.0, {}, [], set()
    xs, ups, hvs, started = [0.0], [0.0], [0.0], [0]
    for i, r in enumerate(recs):
        cpu += float(r.get("cpu_s", 0.0))
        seen.add(r["arch_id"])
        if r["budget"] == top and "~val" not in r["config_key"]:
            scores.setdefault(r["arch_id"], {})[r["seed"]] = r["value"]
            s = scores[r["arch_id"]]
            if set(s) == seeds:
                q, lt = float(np.mean(list(s.values()))), lat[r["arch_id"]]
                if q > ref[0] and lt < ref[1]:
                    pts.append((-q, lt))
        xs.append(cpu)
        ups.append(cpu + inflight[i])
        started.append(len(seen))
        a = np.array(pts) if pts else np.zeros((0, 2))
        hvs.append(hypervolume(a[pareto_mask(a)], np.array([-ref[0], ref[1]])) if len(a) else 0.0)
    front = np.array(pts)[pareto_mask(np.array(pts))].tolist() if pts else []
    return {"cpu_s": xs, "cpu_upper_s": ups, "hv": hvs, "started": started, "final_hv": hvs[-1],
            "total_cpu_s": cpu, "evaluations": len(xs) - 1,
            "top_budget_candidates": len(scores), "front": front}


def _inflight_cpu(recs: list[dict]) -> list[float]:
    """Per record: the CPU seconds of the next record of every other worker process."""
    out = []
    for i, r in enumerate(recs):
        nxt: dict[int, float] = {}
        for q in recs[i + 1:]:
            if q.get("pid") != r.get("pid") and q.get("pid") not in nxt:
                nxt[q.get("pid")] = float(q.get("cpu_s", 0.0))
        out.append(sum(nxt.values()))
    return out


def hv_reference(cfg) -> tuple[float, float]:
    """(quality, latency_ms) of the hypervolume reference point: the image-only model's
    quality (short_train's score is the gain over it, so 0) and the latency budget."""
    return 0.0, float(cfg.constraints.latency_budget_ms)


class _CpuCap:
    """``on_trial`` hook of the sh arm: stop the search (as Ctrl-C does: SIGINT sets the
    driver's stop flag, the loop stops between storage calls) once the finished evaluations
    have spent ``stop_s`` CPU seconds (set beyond the cap: the numbers are read at the cap,
    with the work in flight there, from the evaluations that finished after it)."""

    def __init__(self, run_dir: Path, stop_s: float) -> None:
        self.run_dir, self.stop_s, self.stopped = run_dir, stop_s, False

    def __call__(self, _done: int) -> None:
        from experiments.cache import read_records

        cpu = [float(r.get("cpu_s", 0.0)) for r in read_records(self.run_dir)]
        if not self.stopped and sum(cpu) >= self.stop_s:
            self.stopped = True
            os.kill(os.getpid(), signal.SIGINT)


def run_arm(base, ladder: PrunerConfig, seed: int, n_trials: int, eval_seeds, tmp: Path,
            cap_s: float | None = None) -> dict:
    """One search; the sh arm stops at ``cap_s`` CPU seconds (see :class:`_CpuCap`)."""
    from experiments.runner import SearchOptions, run_search

    cfg = arm_config(base, ladder, seed, n_trials, eval_seeds)
    arm = arm_name(ladder)
    run_dir = tmp / cfg.name
    t0, c0 = time.perf_counter(), time.process_time()
    hook = _CpuCap(run_dir, STOP_BEYOND_CAP * cap_s) if cap_s else None
    s = run_search(cfg, SearchOptions(out=str(run_dir), progress=True, write_plots=False,
                                      on_trial=hook))
    out = curve(run_dir, cfg)
    out.update(wall_s=time.perf_counter() - t0, driver_cpu_s=time.process_time() - c0,
               n_trials=n_trials, complete=s.complete, pruned=s.pruned,
               over_memory=s.over_memory, duplicates=s.duplicates, failed=s.failed,
               stopped_at_cap=bool(hook and hook.stopped), cap_cpu_s=cap_s)
    print(f"seed {seed} {arm}: HV {out['final_hv']:.3f} with {out['total_cpu_s']:.0f} CPU-s "
          f"({out['evaluations']} evaluations, {s.complete} complete, {s.pruned} pruned, "
          f"{out['wall_s']:.0f} s)", file=sys.stderr)
    return out


def _at_cpu(c: dict, cpu_s: float, key: str = "cpu_s") -> float:
    """A run's hypervolume when it had spent at most ``cpu_s`` CPU seconds (``key``: the
    curve's x, ``cpu_upper_s`` counts work in flight at its upper bound)."""
    i = int(np.searchsorted(np.asarray(c[key]), cpu_s, side="right")) - 1
    return float(c["hv"][max(i, 0)])


def _to_reach(c: dict, hv: float) -> float | None:
    """CPU seconds (upper bound) a run took to reach hypervolume ``hv`` (None: never)."""
    for x, h in zip(c["cpu_upper_s"], c["hv"]):
        if h >= hv:
            return float(x)
    return None


def compare(seed: int, lad: PrunerConfig, full: dict, sh: dict, cap: float) -> dict:
    """The per-seed numbers: sh's hypervolume at <= ``cap`` x full's compute (work in flight
    counted at its upper bound) over full's final one; the same for full stopped there."""
    f_hv, f_cpu = full["final_hv"], full["total_cpu_s"]
    cap_s = cap * f_cpu
    # the last point before the first one whose work (finished + in flight) passes the cap
    i = next((k for k, u in enumerate(sh["cpu_upper_s"]) if u > cap_s), len(sh["hv"])) - 1
    reach = _to_reach(sh, TARGETS["hv_fraction"] * f_hv)
    reach_full = _to_reach(full, TARGETS["hv_fraction"] * f_hv)
    return {"seed": seed, "ladder": arm_name(lad),
            "hv_fraction": float(sh["hv"][max(i, 0)]) / f_hv,
            "compute_fraction": float(sh["cpu_upper_s"][max(i, 0)]) / f_cpu,
            "sh_candidates_at_cap": int(sh["started"][max(i, 0)]),
            "full_candidates": int(full["started"][-1]),
            "full_hv_fraction_at_same_compute": _at_cpu(full, cap_s) / f_hv,
            "sh_compute_fraction_to_reach_0.97": None if reach is None else reach / f_cpu,
            "full_compute_fraction_to_reach_0.97": None if reach_full is None else reach_full / f_cpu}


def _mean_ci(xs: list[float]) -> dict:
    """Mean and a 95% bootstrap interval of the mean (seeds resampled)."""
    a = np.asarray(xs, dtype=float)
    rng = np.random.default_rng(0)
    means = [float(np.mean(a[rng.integers(0, len(a), len(a))])) for _ in range(2000)]
    lo, hi = np.percentile(means, [2.5, 97.5]) if len(a) > 1 else (a[0], a[0])
    return {"mean": float(a.mean()), "ci95": [float(lo), float(hi)], "n": int(len(a)),
            "min": float(a.min()), "max": float(a.max())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="12 trials, seed 0, evaluator seed 0")
    ap.add_argument("--json", action="store_true", help="write benchmarks/results/multifidelity.json")
    add_out_argument(ap)
    ap.add_argument("--seeds", default=None, help="search seeds (default 0,1,2; quick 0)")
    ap.add_argument("--n-trials", type=int, default=None,
                    help="candidates of the full-budget search (default 32)")
    ap.add_argument("--sh-factor", type=float, default=4.0,
                    help="the sh arm may propose this many times more candidates (it stops "
                         "at the compute cap first)")
    ap.add_argument("--cap", type=float, default=TARGETS["compute_fraction"],
                    help="the sh arm's compute cap, a fraction of the full arm's CPU seconds")
    ap.add_argument("--eval-seeds", default=None, help="evaluator seeds (default the config's 0,1)")
    ap.add_argument("--tune", default=None, metavar="M,R,K,F;...",
                    help="tuning mode: compare these ladders (min_budget, reduction_factor, "
                         "latency buckets, rung_val_fraction) against one full-budget arm per "
                         "seed; writes benchmarks/results/multifidelity_tuning.json with --json")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    n_trials = args.n_trials or (12 if args.quick else 32)
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
    n_sh = int(round(args.sh_factor * n_trials))
    common = {"n_trials_full": n_trials, "n_trials_sh_max": n_sh, "cap": args.cap,
              "evaluator_seeds": list(eval_seeds), "search_seeds": seeds}
    with tempfile.TemporaryDirectory(prefix="temponas-mf-") as td:
        for seed in seeds:
            full = run_arm(base, PrunerConfig(), seed, n_trials, eval_seeds, Path(td))
            runs[str(seed)] = {"full": full}
            for lad in ladders:
                sh = run_arm(base, lad, seed, n_sh, eval_seeds, Path(td),
                             cap_s=args.cap * full["total_cpu_s"])
                runs[str(seed)][arm_name(lad)] = sh
                per_seed.append(compare(seed, lad, full, sh, args.cap))
                print(json.dumps(per_seed[-1]), file=sys.stderr)
            if args.tune:  # after every seed: a stopped tuning run keeps its finished seeds
                _write_tuning(args, {**common, "search_seeds": list(runs)}, ladders, per_seed,
                              runs)
    if args.tune:
        return 0
    return _write_result(args, base, common, t_pre, per_seed, runs)

def _summary(per_seed: list[dict]) -> dict:
    return {k: _mean_ci([p[k] for p in per_seed])
            for k in ("hv_fraction", "compute_fraction", "full_hv_fraction_at_same_compute")}


def _slim(runs: dict) -> dict:
    keep = ("final_hv", "total_cpu_s", "evaluations", "complete", "pruned", "over_memory",
            "duplicates", "n_trials", "stopped_at_cap", "wall_s", "driver_cpu_s", "front")
    return {s: {a: {k: c[k] for k in keep} for a, c in r.items()} for s, r in runs.items()}


def _write_tuning(args, common: dict, ladders, per_seed: list[dict], runs: dict) -> int:
    """Write (or add to: other ladders of an earlier tuning run with the same settings)
    ``multifidelity_tuning.json``."""
    path = results_dir(args.quick, args.out) / "multifidelity_tuning.json"
    names = {arm_name(lad) for lad in ladders}
    old = json.loads(path.read_text()) if args.json and path.exists() else {}
    same = all(old.get(k) == common[k] for k in ("n_trials_full", "cap", "evaluator_seeds"))
    if not same:
        old = {}
    per_seed = [p for p in old.get("per_seed", []) if p["ladder"] not in names] + per_seed
    slim = _slim(runs)
    for seed, arms in old.get("runs", {}).items():
        slim.setdefault(seed, {}).update({a: c for a, c in arms.items() if a not in names
                                          and a != "full" or a not in slim.get(seed, {})})
    by = {name: _summary([p for p in per_seed if p["ladder"] == name])
          for name in dict.fromkeys(p["ladder"] for p in per_seed)}
    out = {**common, "tuning_seeds": sorted({p["seed"] for p in per_seed}), "ladders": by,
           "per_seed": per_seed, "runs": slim}
    print(json.dumps({k: {m: v["mean"] for m, v in d.items()} for k, d in by.items()}, indent=1))
    if args.json:
        from common.fsio import atomic_write_json

        atomic_write_json(path, out)
    return 0


def _write_result(args, base, common: dict, t_pre: float, per_seed: list[dict], runs: dict) -> int:
    summ = _summary(per_seed)
    hv_f, cf = summ["hv_fraction"]["mean"], summ["compute_fraction"]["mean"]
    ref = hv_reference(base)
    result = {
        "benchmark": "multifidelity", "quick": args.quick, "config": str(CONFIG.relative_to(ROOT)),
        "space_size": base.search_space.size(), "proxy_scale": dict(base.evaluator.options["scale"]),
        "top_budget": base.evaluator.budget, "sampler": "tpe", **common,
        "ladder": {"pruner": LADDER.name, "min_budget": LADDER.min_budget,
                   "reduction_factor": LADDER.reduction_factor,
                   "latency_buckets": LADDER.latency_buckets,
                   "rung_val_fraction": LADDER.rung_val_fraction,
                   "rungs": rung_budgets(LADDER.min_budget, LADDER.reduction_factor,
                                         base.evaluator.budget)},
        "chosen_on": TUNING, "held_equal": HELD_EQUAL,
        "hv_fraction": hv_f, "compute_fraction": cf, **{f"{k}_stats": v for k, v in summ.items()},
        "hv_fraction_min": summ["hv_fraction"]["min"],
        "compute_fraction_max": summ["compute_fraction"]["max"],
        "per_seed": per_seed,
        "hypervolume_reference": {"quality": ref[0], "latency_ms": ref[1],
                                  "why": "quality 0 = the image-only model (short_train scores "
                                         "the held-out denoising gain over it); latency = the "
                                         "search's latency budget"},
        "compute": COMPUTE_NOTE, "pretrain_or_load_s": t_pre, "targets": TARGETS,
        "pass": bool(hv_f >= TARGETS["hv_fraction"] and cf <= TARGETS["compute_fraction"]),
        "pass_every_seed": bool(all(p["hv_fraction"] >= TARGETS["hv_fraction"] and
                                    p["compute_fraction"] <= TARGETS["compute_fraction"]
                                    for p in per_seed)),
        "runs": runs, "machine": f"{os.cpu_count()} cores (shared)",
        "load_average_1m_at_end": os.getloadavg()[0],
    }
    print(json.dumps({k: result[k] for k in ("hv_fraction", "compute_fraction", "hv_fraction_stats",
                                             "per_seed", "pass")}, indent=1))
    if args.json:
        from common.fsio import atomic_write_json

        out = results_dir(args.quick, args.out) / ("multifidelity_quick.json" if args.quick
                                                   else "multifidelity.json")
        tuning = RESULTS / "multifidelity_tuning.json"
        if tuning.exists() and not args.quick:
            result["tuning"] = json.loads(tuning.read_text())
        atomic_write_json(out, result)
        _plot(result, out.with_suffix(".png"))
        print(f"wrote {out}", file=sys.stderr)
    return 0


def _plot(result: dict, path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from common.fsio import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for i, arms in enumerate(result["runs"].values()):
        for arm, c in arms.items():
            full = arm == "full"
            label = None if i else ("full budget (30 steps), " f"{result['n_trials_full']} candidates"
                                    if full else "successive halving " + str(rung_ladder(result))
                                    + ", stopped at the compute cap")
            color = "tab:gray" if full else "tab:blue"
            xs = c["cpu_s"] if full else c["cpu_upper_s"]
            ax.step(xs, c["hv"], where="post", c=color, alpha=0.8, lw=1.3, label=label)
            ax.plot(xs[-1], c["hv"][-1], "o", c=color, ms=5)
            if full:
                ax.axvline(result["cap"] * c["total_cpu_s"], c="tab:red", lw=0.8, alpha=0.5,
                           label=None if i else f"cap: {result['cap']:g} x full's CPU-s")
                ax.axhline(TARGETS["hv_fraction"] * c["final_hv"], c="tab:gray", lw=0.6, ls=":")
    ax.set_xlabel("evaluation CPU seconds (sh: work in flight at its upper bound)")
    ax.set_ylabel("hypervolume (quality gain x latency below 1000 ms)")
    st = result["hv_fraction_stats"]
    ax.set_title(f"short-training search, seeds {result['search_seeds']}: hv_fraction "
                 f"{st['mean']:.3f} [{st['ci95'][0]:.3f}, {st['ci95'][1]:.3f}] at compute_fraction "
                 f"{result['compute_fraction']:.2f}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def rung_ladder(result: dict) -> list[int]:
    lad = result["ladder"]
    return rung_budgets(lad["min_budget"], lad["reduction_factor"], result["top_budget"])


if __name__ == "__main__":
    sys.exit(main())
