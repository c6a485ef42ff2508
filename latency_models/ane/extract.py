"""One-time extraction of the fit set's Core ML features (``make fitset-features``).

For every (model, precision) that an included row of ``data/measurements.csv`` needs: build
the network from its recipe, convert it to an fp16 mlprogram (iOS17), apply the row's weight
compression, and read the per-operator features of the MIL program (:mod:`.mil`). Writes
``data/ops.csv`` (identical operators merged, with a count) and ``data/programs.csv`` (one row
per program: recipe and feature hashes, totals, conversion time, tool versions).

Needs timm, torchvision, open_clip and transformers, which do not install beside the project's
torch CPU wheel; the Makefile target builds a separate environment for this step only. Results
are cached per program (``--cache``), so an interrupted run resumes. Usage::

    python -m latency_models.ane.extract [--only MODEL ...] [--cache DIR] [--data DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import json
import logging
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

from common.fsio import atomic_write, atomic_write_text
from latency_models.ane import mil
from latency_models.ane.recipes import (
    DATA_DIR,
    Recipe,
    build,
    compress,
    convert,
    load_recipes,
    probe_signatures,
    unet_blocks,
)

OPS_COLUMNS = ("program", "cls", "op_type", "flops", "act", "weights", "weight_bits", "count")
PROGRAM_COLUMNS = ("program", "model", "precision", "builder", "name", "route", "recipe_sha256",
                   "ops_sha256", "n_ops", "gflop", "weight_melem", "act_melem",
                   "published_params_m", "convert_s", "versions", "signature")


def program_name(model: str, precision: str) -> str:
    return f"{model}@{precision}"


def needed_programs(measurements: Path) -> dict[str, set[str]]:
    """model -> precisions used by the included rows."""
    need: dict[str, set[str]] = {}
    with open(measurements, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            if r["include"].strip() == "1":
                need.setdefault(r["model"], set()).add(r["precision"])
    return need


def ops_hash(ops: Counter) -> str:
    rows = sorted((*mil.op_row(o), n) for o, n in ops.items())
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def _versions() -> str:
    import importlib.metadata as md

    out = []
    for p in ("torch", "coremltools", "numpy", "timm", "torchvision", "open_clip_torch", "transformers"):
        try:
            out.append(f"{p}={md.version(p)}")
        except md.PackageNotFoundError:
            pass
    return " ".join(out)


@contextlib.contextmanager
def _quiet():
    """coremltools prints progress bars and warnings per conversion: keep the log readable."""
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def extract_model(recipe: Recipe, precisions: set[str], target: str = "iOS17") -> dict[str, dict]:
    """``{precision: {"ops": Counter, "route": str, "convert_s": float}}`` of one recipe."""
    t0 = time.perf_counter()
    out: dict[str, dict] = {}
    if recipe.builder == "temponas_unet_blocks":
        from latency_models.backends.coreml_export import convert_module
        from search_space.modules import build_block, example_inputs, input_specs

        acc = {p: Counter() for p in precisions}
        for sig, count in unet_blocks(recipe).items():
            with _quiet():
                ml = convert_module(build_block(sig), example_inputs(sig),
                                    input_names=[n for n, _ in input_specs(sig)], target=target)
                for p in precisions:
                    acc[p].update(mil.aggregate(mil.program_ops(compress(ml, p)._mil_program), count))
        for p in precisions:
            out[p] = {"ops": acc[p], "route": "per-block torch.export", "convert_s": time.perf_counter() - t0}
        return out
    module, example = build(recipe)
    with _quiet():
        ml, route = convert(module, example, recipe.spec["inputs"], target)
        t_conv = time.perf_counter() - t0
        for p in sorted(precisions):
            t1 = time.perf_counter()
            out[p] = {"ops": mil.aggregate(mil.program_ops(compress(ml, p)._mil_program)),
                      "route": route, "convert_s": t_conv + time.perf_counter() - t1}
    return out


def probe_program(sig) -> str:
    from latency_models.measurements import probe_id

    return f"probe:{probe_id(sig)}"


def extract_probe(sig, precisions, target: str = "iOS17") -> dict[str, dict]:
    """One temponas block signature (``build_block``) through the same path as the fit set."""
    from latency_models.backends.coreml_export import convert_module
    from search_space.modules import build_block, example_inputs, input_specs

    t0 = time.perf_counter()
    with _quiet():
        ml = convert_module(build_block(sig), example_inputs(sig),
                            input_names=[n for n, _ in input_specs(sig)], target=target)
        return {p: {"ops": mil.aggregate(mil.program_ops(compress(ml, p)._mil_program)),
                    "route": "torch.export", "convert_s": time.perf_counter() - t0} for p in precisions}


def _cache_doc(recipe: Recipe, precision: str, res: dict, versions: str, key: str | None = None,
               signature: dict | None = None) -> dict:
    ops = res["ops"]
    tot = mil.totals(ops)
    key = key or recipe.key
    return {"program": program_name(key, precision), "model": key, "precision": precision,
            "builder": recipe.builder, "name": recipe.spec.get("name", ""), "route": res["route"],
            "recipe_sha256": recipe.sha256, "ops_sha256": ops_hash(ops), "n_ops": int(tot["n_ops"]),
            "gflop": round(sum(tot[f"{c}_gflop"] for c in ("conv", "conv3d", "linear", "attn")), 6),
            "weight_melem": round(tot["weight_melem"], 6), "act_melem": round(tot["act_melem"], 6),
            "published_params_m": recipe.spec.get("published_params_m", ""),
            "convert_s": round(res["convert_s"], 2), "versions": versions,
            "signature": json.dumps(signature, sort_keys=True) if signature else "",
            "ops": [[*mil.op_row(o), n] for o, n in sorted(ops.items(), key=lambda kv: mil.op_row(kv[0]))]}


def _write_csv(path: Path, columns, rows) -> None:
    def writer(f) -> None:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(columns)
        w.writerows(rows)

    atomic_write(path, writer)


def write_tables(docs: list[dict], data: Path) -> None:
    docs = sorted(docs, key=lambda d: d["program"])
    _write_csv(data / "programs.csv", PROGRAM_COLUMNS, [[d.get(c, "") for c in PROGRAM_COLUMNS] for d in docs])
    ops_rows = []
    for d in docs:
        for cls, flops, act, weights, bits, op_type, n in d["ops"]:
            ops_rows.append([d["program"], cls, op_type, repr(float(flops)), repr(float(act)),
                             repr(float(weights)), bits, n])
    _write_csv(data / "ops.csv", OPS_COLUMNS, ops_rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DATA_DIR),
                    help="folder of measurements.csv/recipes.json (written: ops.csv, programs.csv)")
    ap.add_argument("--cache", default=".cache/ane_fitset", help="per-program JSON cache (resume)")
    ap.add_argument("--only", nargs="*", help="models to (re)extract; the tables hold all cached ones")
    args = ap.parse_args(argv)
    data, cache = Path(args.data), Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    recipes = load_recipes(data / "recipes.json")
    need = needed_programs(data / "measurements.csv")
    missing = sorted(set(need) - set(recipes))
    if missing:
        print(f"error: {data / 'measurements.csv'}: no recipe for model {missing[0]!r}", file=sys.stderr)
        return 2
    versions = _versions()
    docs, failed = [], []
    jobs = [(k, None) for k in sorted(need, key=lambda k: (recipes[k].builder == "temponas_unet_blocks", k))]
    for rec in recipes.values():
        if rec.builder == "temponas_probes":
            jobs += [(probe_program(sig), (rec, sig)) for sig in probe_signatures(rec)]
    for key, probe in jobs:
        rec = recipes[key] if probe is None else probe[0]
        precs = need[key] if probe is None else set(rec.spec.get("precisions", ["fp16"]))
        files = {p: cache / f"{program_name(key, p).replace(':', '_')}.json" for p in precs}
        cached = {}
        for p, f in files.items():
            if f.exists():
                d = json.loads(f.read_text(encoding="utf-8"))
                if d.get("recipe_sha256") == rec.sha256:
                    cached[p] = d
        todo = {p for p in precs if p not in cached or (args.only and key in args.only)}
        if todo:
            print(f"{key}: converting ({', '.join(sorted(todo))}) ...", flush=True)
            try:
                res = extract_model(rec, todo) if probe is None else extract_probe(probe[1], todo)
            except Exception as e:  # noqa: BLE001 - report every failing recipe, then fail
                print(f"  FAILED: {type(e).__name__}: {str(e).splitlines()[0][:300]}", flush=True)
                failed.append(key)
                continue
            for p, r in res.items():
                cached[p] = _cache_doc(rec, p, r, versions, key, probe[1].to_dict() if probe else None)
                atomic_write_text(files[p], json.dumps(cached[p]), durable=False)  # a cache
                print(f"  {program_name(key, p)}: {cached[p]['n_ops']} ops, {cached[p]['gflop']:.3f} GFLOP, "
                      f"{cached[p]['weight_melem']:.2f} M weights, {cached[p]['convert_s']:.1f} s", flush=True)
        docs.extend(cached.values())
    write_tables(docs, data)
    print(f"wrote {data / 'programs.csv'} ({len(docs)} programs) and {data / 'ops.csv'}")
    if failed:
        print(f"error: {len(failed)} recipe(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
