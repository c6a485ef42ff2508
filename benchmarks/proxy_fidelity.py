"""Proxy fidelity benchmark: do the proxies rank snapgen_v candidates like short training
does, on architectures they were not chosen on, and is short training itself reproducible?

Runs the held-out audit of ``evaluators.audit_heldout`` on two samples of the ``snapgen_v``
default search space (the space of experiments/configs/default.yaml) at the default proxy
scale (width x0.0625, 8 frames of 8x8 latents): the choose sample (sample seed 0) and the
held-out report sample (sample seed 1); on each, short training at two budgets and two seeds,
every zero-cost proxy, the params/FLOPs baselines and the weight-sharing supernet. Prints one
JSON object:

    seed_kendall, budget_kendall, params_kendall_vs_short_train, proxies {name: tau} (choose
    sample), heldout {name: tau on the held-out sample}, default_proxy (chosen on the choose
    sample among proxies that fit the time budget of ``make search``), supernet_s_per_arch,
    supernet_train_s, short_train_s_per_arch, zero_cost_s_per_arch, improvement, ...

    python benchmarks/proxy_fidelity.py [--quick] [--json] [--workers 2]

Full: 24 architectures per sample, budgets 15,30 (30 = short_train's default budget). Quick:
8 architectures, budgets 8,15. With --json the summary goes to
<out>/proxy_fidelity[_quick].json and the full reports (heldout.md/.json, and markdown, CSV,
plot of each sample under choose/ and report/) to <out>/proxy_fidelity[_quick]/; <out> is
--out, by default benchmarks/results/ for a full run and nowhere for --quick (it only
prints). Timings are wall-clock and CPU seconds on this
(shared) machine, one torch thread per process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from common.fsio import atomic_write_text, json_safe
from evaluators.audit import DEFAULT_PROXIES, AuditSpec
from evaluators.audit_heldout import SearchBudget, run_heldout_audit, write_heldout_report
from search_space.presets import default_task, get_backbone
from search_space.space import default_space


def _time_default_budget(bb, space, k: int) -> dict:
    """Fresh short_train runs at the default budget (no cache) in this process, 1 thread:
    wall-clock and CPU seconds (CPU time is what one core would take on an idle machine)."""
    from tqdm import tqdm

    from evaluators.audit import sample_archs
    from evaluators.registry import create_evaluator

    if k < 1:
        return {}
    ev = create_evaluator("short_train", bb, {"cache_results": False})
    archs = sample_archs(space, k, 12345)
    ev.image_only_loss(archs[0].task.latent_channels)  # pretrained backbone + data (cached)
    wall, cpu = [], []
    for a in tqdm(archs, desc="timing short_train", file=sys.stderr):
        t0, c0 = time.perf_counter(), time.process_time()
        ev.evaluate(a, seed=0, budget=0)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"budget": ev.options.default_budget, "archs": [a.arch_id for a in archs],
            "wall_s": wall, "cpu_s": cpu, "wall_s_mean": sum(wall) / k, "cpu_s_mean": sum(cpu) / k,
            "cpu_s_max": max(cpu)}


#: ``make search``: 400 trials on 2 workers in <= 10 min (first run, cold cache). Measured with
#: naswot it takes ~4 min (README), of which naswot's own evaluations are ~0.5 min: the rest
#: (image-backbone pretraining, Ray, sampler, latency model, report) is ~3.5 min, so a quality
#: proxy may spend 600 - 240 = 360 s (one-time training + evaluations), rounding the rest up.
MAKE_SEARCH_BUDGET = SearchBudget(seconds=360.0, n_trials=400, workers=2)
CHOOSE_SEED, REPORT_SEED = 0, 1



def _summary(args: argparse.Namespace, both: dict, timing: dict, t0: float) -> dict:
    """The JSON summary of a held-out audit run (what `--json` writes)."""
    res, rep, h = both["choose"], both["report"], both["heldout"]
    sn_choose, sn_report = res["proxies"]["supernet"], rep["proxies"]["supernet"]
    return {
        "benchmark": "proxy_fidelity", "quick": bool(args.quick), "backbone": "snapgen_v",
        "n_archs": res["n_archs"], "budgets": res["budgets"], "seeds": res["seeds"],
        "proxy_scale": res["evaluators"]["short_train"]["options"]["scale"],
        "seed_kendall": res["seed_kendall"],
        "budget_kendall": res["budget_kendall"],
        "params_kendall_vs_short_train": res["params_kendall_vs_short_train"],
        "proxies": {k: v["vs_short_train"]["kendall"] for k, v in res["proxies"].items()},
        "proxies_kendall_ci": {k: v["vs_short_train"]["kendall_ci"] for k, v in res["proxies"].items()},
        "proxies_spearman": {k: v["vs_short_train"]["spearman"] for k, v in res["proxies"].items()},
        "proxies_kendall_vs_params": {k: v.get("vs_params", {}).get("kendall") for k, v in res["proxies"].items()},
        "proxies_seed_kendall": {k: v.get("seed_kendall") for k, v in res["proxies"].items()},
        "proxies_size_dominated": [k for k, v in res["proxies"].items() if v["size_dominated"]],
        "proxies_beating_params": [k for k, v in res["proxies"].items() if v["beats_params"]],
        "best_zero_cost_proxy": res["best_zero_cost_proxy"],
        "short_train_s_per_arch": res["short_train_s_per_arch"],
        "short_train_s_per_arch_note": f"one (arch, seed) run to {res['budgets'][-1]} steps incl. "
                                       "two validation passes, 1 thread, shared machine",
        "short_train_runs_from_cache": res.get("short_train_runs_from_cache", 0),
        "short_train_timing_note": "a run read from the short_train result cache reports the wall "
                                   "and CPU time measured when it was computed; wall_time_s below "
                                   "covers only this invocation",
        "zero_cost_s_per_arch": res["zero_cost_s_per_arch"],
        "zero_cost_s_per_arch_by_proxy": {k: v["s_per_arch"] for k, v in res["proxies"].items()},
        "short_train_cpu_s_per_arch": res.get("short_train_cpu_s_per_arch"),
        "zero_cost_cpu_s_per_arch": res.get("zero_cost_cpu_s_per_arch"),
        "zero_cost_cpu_s_per_arch_by_proxy": {k: v.get("cpu_s_per_arch") for k, v in res["proxies"].items()},
        "default_budget_timing": timing,
        "improvement": res["improvement"],
        "choose_sample_seed": CHOOSE_SEED, "heldout_sample_seed": REPORT_SEED,
        "heldout": {k: v["report_kendall"] for k, v in h["proxies"].items()},
        "heldout_kendall_ci": {k: v["report_kendall_ci"] for k, v in h["proxies"].items()},
        "heldout_seed_kendall": rep["seed_kendall"], "heldout_budget_kendall": rep["budget_kendall"],
        "heldout_improvement": rep["improvement"],
        "default_proxy": h["chosen"],
        "default_proxy_note": "chosen on the choose sample (highest Kendall tau vs short_train) "
                              "among proxies whose one-time CPU-s + 400 evaluations / 2 workers "
                              f"fit {MAKE_SEARCH_BUDGET.seconds:.0f} s (make search: <= 10 min "
                              "incl. ~4 min of everything else); its held-out tau is in heldout",
        "default_proxy_holds_on_heldout": h["choice_holds"],
        "best_on_heldout": h["best_on_report"],
        "search_cost_s": {k: v["search_cost_s"] for k, v in h["proxies"].items()},
        "supernet_s_per_arch": (sn_choose["s_per_arch"] + sn_report["s_per_arch"]) / 2,
        "supernet_cpu_s_per_arch": (sn_choose["cpu_s_per_arch"] + sn_report["cpu_s_per_arch"]) / 2,
        "supernet_train_s": sn_choose["one_time"]["wall_time_s"],
        "supernet_train_cpu_s": sn_choose["one_time"]["cpu_s"],
        "supernet_options": res["evaluators"]["supernet"]["options"],
        "wall_time_s": time.perf_counter() - t0,
        "load_average_1m_at_end": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8 archs, budgets 8,15 (< 10 min)")
    ap.add_argument("--json", action="store_true",
                    help="write the summary and reports under --out (full run: "
                         "benchmarks/results/ by default; --quick: only with --out)")
    ap.add_argument("--out", default="", metavar="DIR",
                    help="directory for --json's files (a quick run never overwrites the "
                         "committed results unless told to)")
    ap.add_argument("--workers", type=int, default=2, help="short-training processes")
    ap.add_argument("--n-archs", type=int, default=None)
    ap.add_argument("--timing", type=int, default=None,
                    help="archs timed afresh at short_train's default budget, 1 thread, cache "
                         "off, wall and CPU seconds (default 4, quick 2)")
    args = ap.parse_args(argv)

    bb = get_backbone("snapgen_v")
    space = default_space(bb, default_task("snapgen_v"))
    n = args.n_archs or (8 if args.quick else 24)
    budgets = (8, 15) if args.quick else (15, 30)
    spec = AuditSpec(backbone=bb, space=space, n_archs=n, budgets=budgets, seeds=(0, 1),
                     proxies=DEFAULT_PROXIES, workers=args.workers, bootstrap=1000)
    t0 = time.perf_counter()
    both = run_heldout_audit(spec, CHOOSE_SEED, REPORT_SEED, MAKE_SEARCH_BUDGET, progress=True)
    timing = _time_default_budget(bb, space, args.timing if args.timing is not None
                                  else (2 if args.quick else 4))
    summary = json_safe(_summary(args, both, timing, t0))
    text = json.dumps(summary, indent=1, sort_keys=True)
    out = args.out or ("" if args.quick else os.path.join(HERE, "results"))
    if args.json and out:
        name = "proxy_fidelity_quick" if args.quick else "proxy_fidelity"
        write_heldout_report(both, os.path.join(out, name))
        atomic_write_text(os.path.join(out, f"{name}.json"), text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
