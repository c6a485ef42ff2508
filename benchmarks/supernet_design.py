"""Supernet design benchmark: which weight sharing, path sampling, weight averaging, training
length and fine-tuning make the ``supernet`` proxy rank candidates like short training?

Measured on the CHOOSE sample only (sample seed 0: the 24 snapgen_v architectures of
benchmarks/proxy_fidelity.py), never on its held-out sample: the defaults of
``evaluators._supernet`` were picked from these numbers, and proxy_fidelity.py reports them
once on the held-out sample. Reference: short_train at 30 steps, mean of seeds 0 and 1 (read
from the short_train result cache when present). Every configuration trains its own supernet
through the public evaluator (cached on disk, deterministic: a rerun reproduces the taus).

    python benchmarks/supernet_design.py [--json] [--configs NAME,NAME] [--cache-dir DIR]

Prints one JSON object: ``configs {name: {train options, finetune_steps, kendall, kendall_ci,
train_cpu_s, train_wall_s, cpu_s_per_arch}}``, ``chosen`` (the default configuration) and
``best`` (highest tau); with --json also writes benchmarks/results/supernet_design.json.
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
from common.stats import bootstrap_ci, kendall
from evaluators.audit import sample_archs
from evaluators.registry import create_evaluator
from search_space.presets import default_task, get_backbone
from search_space.space import default_space

#: name -> (train options, finetune steps); "default" is what the evaluator ships with
CONFIGS: dict[str, tuple[dict, int]] = {
    "last_iterate_300": ({"ema": 0.0}, 0),
    "last_iterate_600": ({"ema": 0.0, "steps": 600}, 0),
    "ema0.8_300": ({"ema": 0.8}, 0),
    "ema0.9_300": ({"ema": 0.9}, 0),
    "ema0.9_600": ({"ema": 0.9, "steps": 600}, 0),
    "ema0.95_100": ({"steps": 100}, 0),
    "default": ({}, 0),  # uniform sampling, crop kernels, shared heads, ema 0.95, 300 steps
    "ema0.98_300": ({"ema": 0.98}, 0),
    "max_count_ema0.9_300": ({"sampling": "max_count", "ema": 0.9}, 0),
    "max_count_300": ({"sampling": "max_count"}, 0),
    "sandwich_ema0.9_150": ({"sampling": "sandwich", "ema": 0.9, "steps": 150}, 0),
    "separate_weights_ema0.9_300": ({"kernel_sharing": "separate", "head_sharing": "separate",
                                     "ema": 0.9}, 0),
    "cosine_ema0.9_200": ({"schedule": "cosine", "ema": 0.9, "steps": 200}, 0),
    "finetune_3": ({}, 3),
    "finetune_10": ({}, 10),
}
CHOOSE_SEED, N_ARCHS = 0, 24


def reference(bb, archs) -> list[float]:
    """short_train at its default budget (30), mean over seeds 0 and 1 (cached results)."""
    from tqdm import tqdm
    st = create_evaluator("short_train", bb, {})
    out = []
    for a in tqdm(archs, desc="short_train reference", file=sys.stderr):
        out.append(sum(st.evaluate(a, seed=s, budget=30).value for s in (0, 1)) / 2)
    return out


def measure(bb, archs, ref, train: dict, finetune: int, cache_dir: str) -> dict:
    opts = {"train": train, "finetune_steps": finetune}
    if cache_dir:
        opts["cache_dir"] = cache_dir
    ev = create_evaluator("supernet", bb, opts)
    ev.evaluate(archs[0], seed=0)  # one-time training (or cache read)
    c0, t0 = time.process_time(), time.perf_counter()
    vals = [ev.evaluate(a, seed=0).value for a in archs]
    cost = ev.one_time_cost(archs[0].task.latent_channels)
    return {"train": train, "finetune_steps": finetune, "kendall": kendall(vals, ref),
            "kendall_ci": bootstrap_ci(vals, ref, kendall, 1000),
            "train_cpu_s": cost["cpu_s"], "train_wall_s": cost["wall_time_s"],
            "cpu_s_per_arch": (time.process_time() - c0) / len(archs),
            "s_per_arch": (time.perf_counter() - t0) / len(archs), "values": vals}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="write benchmarks/results/supernet_design.json")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated names")
    ap.add_argument("--cache-dir", default="", help="supernet/short_train cache (default: ~/.cache/temponas)")
    args = ap.parse_args(argv)
    bb = get_backbone("snapgen_v")
    archs = sample_archs(default_space(bb, default_task("snapgen_v")), N_ARCHS, CHOOSE_SEED)
    ref = reference(bb, archs)
    t0 = time.perf_counter()
    res = {}
    for name in args.configs.split(","):
        train, ft = CONFIGS[name]
        res[name] = measure(bb, archs, ref, train, ft, args.cache_dir)
        r = res[name]
        print(f"{name}: tau {r['kendall']:+.3f} [{r['kendall_ci'][0]:+.2f}, {r['kendall_ci'][1]:+.2f}]"
              f" train {r['train_cpu_s']:.0f} CPU-s, {r['cpu_s_per_arch']:.2f} CPU-s/arch",
              file=sys.stderr, flush=True)
    summary = json_safe({
        "benchmark": "supernet_design", "backbone": "snapgen_v", "sample_seed": CHOOSE_SEED,
        "n_archs": len(archs), "archs": [a.arch_id for a in archs],
        "reference": "short_train budget 30, mean of seeds 0 and 1", "reference_values": ref,
        "configs": res, "chosen": "default",
        "best": max(res, key=lambda n: res[n]["kendall"]),
        "wall_time_s": time.perf_counter() - t0, "load_average_1m_at_end": os.getloadavg()[0]})
    text = json.dumps(summary, indent=1, sort_keys=True)
    if args.json:
        atomic_write_text(os.path.join(HERE, "results", "supernet_design.json"), text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
