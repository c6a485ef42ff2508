"""How does a new latency prior change a search's Pareto front?

Re-prices every evaluated trial of a finished run (quality from the run, memory unchanged) with
an old and a new latency model, recomputes the feasible front (the run's latency and memory
budgets) under each, and, with ``--rerun``, also compares with the front of a second run that
searched with the new model from the start. Writes a JSON and a markdown comparison.

    python benchmarks/prior_front_change.py RUN --old OLD_PROFILE.json --new iphone16pm \\
        [--rerun RUN2] [--out benchmarks/results/prior_front_change]
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import Counter
from pathlib import Path

from common.fsio import atomic_write_text
from latency_models import load_latency_model
from search_space.arch import ArchConfig


def read_run(run: Path) -> tuple[dict, list[dict]]:
    """run.json and the COMPLETE trials (best quality per architecture) with their arch."""
    meta = json.loads((run / "run.json").read_text())
    best: dict[str, dict] = {}
    with open(run / "trials.csv", newline="") as f:
        for r in csv.DictReader(f):
            if r["state"] != "COMPLETE" or r["quality"] in ("", None):
                continue
            r = {**r, "quality": float(r["quality"]), "memory_mb": float(r["memory_mb"] or "nan"),
                 "latency_ms": float(r["latency_ms"])}
            if r["arch_id"] not in best or r["quality"] > best[r["arch_id"]]["quality"]:
                best[r["arch_id"]] = r
    for r in best.values():
        r["arch"] = ArchConfig.load(run / "archs" / f"{r['arch_id']}.json")
    return meta, list(best.values())


def budgets(run: Path) -> tuple[float, float]:
    """The run's latency and memory budgets (its ``config.yaml``)."""
    from common.loaders import load_yaml

    c = (load_yaml(run / "config.yaml") or {}).get("constraints") or {}
    return float(c.get("latency_budget_ms") or "inf"), float(c.get("memory_budget_mb") or "inf")


def front(rows: list[dict], key: str, lat_budget: float, mem_budget: float) -> list[dict]:
    """Feasible non-dominated rows (maximize quality, minimize ``key``), by latency."""
    ok = [r for r in rows if r[key] <= lat_budget and not r["memory_mb"] > mem_budget]
    out = [r for r in ok if not any((o["quality"] >= r["quality"] and o[key] <= r[key])
                                    and (o["quality"] > r["quality"] or o[key] < r[key]) for o in ok)]
    return sorted(out, key=lambda r: r[key])


def kinds(rows: list[dict]) -> dict[str, int]:
    c: Counter = Counter()
    for r in rows:
        for stage, ch in r["arch"].stages:
            if ch.count:
                c[f"{stage}:{ch.kind.value}"] += ch.count
    return dict(sorted(c.items()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--old", required=True, help="the latency model the run used")
    ap.add_argument("--new", required=True)
    ap.add_argument("--rerun", help="a run that searched with the new model")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "prior_front_change"))
    args = ap.parse_args(argv)
    _, rows = read_run(Path(args.run))
    lat_b, mem_b = budgets(Path(args.run))
    old, new = load_latency_model(args.old), load_latency_model(args.new)
    for r in rows:
        r["old_ms"] = old.predict(r["arch"]).mean_ms
        r["new_ms"] = new.predict(r["arch"]).mean_ms
    a0 = rows[0]["arch"]
    empty = ArchConfig.create(a0.backbone, a0.task, {}, [s for s, _ in a0.stages])
    f_old, f_new = front(rows, "old_ms", lat_b, mem_b), front(rows, "new_ms", lat_b, mem_b)
    ids_old, ids_new = {r["arch_id"] for r in f_old}, {r["arch_id"] for r in f_new}
    from scipy import stats

    res = {"run": str(args.run), "trials_with_quality": len(rows), "latency_budget_ms": lat_b,
           "memory_budget_mb": mem_b,
           "image_backbone_ms": {"old": old.predict(empty).mean_ms, "new": new.predict(empty).mean_ms},
           "spearman_old_vs_new_latency": float(stats.spearmanr([r["old_ms"] for r in rows],
                                                                [r["new_ms"] for r in rows]).statistic),
           "feasible": {"old": sum(r["old_ms"] <= lat_b for r in rows), "new": sum(r["new_ms"] <= lat_b for r in rows)},
           "front_old": [{"arch_id": r["arch_id"], "quality": r["quality"], "old_ms": r["old_ms"],
                          "new_ms": r["new_ms"]} for r in f_old],
           "front_new": [{"arch_id": r["arch_id"], "quality": r["quality"], "old_ms": r["old_ms"],
                          "new_ms": r["new_ms"]} for r in f_new],
           "kept": len(ids_old & ids_new), "dropped": len(ids_old - ids_new), "added": len(ids_new - ids_old),
           "temporal_blocks_old_front": kinds(f_old), "temporal_blocks_new_front": kinds(f_new)}
    per_kind: dict[str, list[float]] = {}
    for r in rows:
        for _stage, ch in r["arch"].stages:
            if ch.count:
                per_kind.setdefault(ch.kind.value, []).append(r["new_ms"] / r["old_ms"])
    res["new_over_old_by_kind_median"] = {k: sorted(v)[len(v) // 2] for k, v in sorted(per_kind.items())}
    if args.rerun:
        _, rows2 = read_run(Path(args.rerun))
        f2 = front(rows2, "latency_ms", lat_b, mem_b)
        res["rerun"] = {"run": str(args.rerun), "trials_with_quality": len(rows2),
                        "front": [{"arch_id": r["arch_id"], "quality": r["quality"], "latency_ms": r["latency_ms"]}
                                  for r in f2], "temporal_blocks_front": kinds(f2),
                        "shared_with_repriced_front": len({r["arch_id"] for r in f2} & ids_new)}
    caps = (675.0, 700.0, 750.0, 800.0, lat_b)
    res["best_quality_within_ms_new_prior"] = {
        "repriced_old_run": {str(c): max((r["quality"] for r in f_new if r["new_ms"] <= c), default=None)
                             for c in caps},
        **({"rerun": {str(c): max((r["quality"] for r in res["rerun"]["front"] if r["latency_ms"] <= c),
                                  default=None)
                      for c in caps}} if args.rerun else {})}
    out = Path(args.out)
    atomic_write_text(out.with_suffix(".json"), json.dumps(res, indent=1, sort_keys=True) + "\n")
    print(json.dumps({k: v for k, v in res.items() if not k.startswith("front") and k != "rerun"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
