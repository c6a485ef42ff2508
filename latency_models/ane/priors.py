"""Build the shipped device priors from the fitted Neural Engine cost model (one command:
``python -m latency_models.ane.priors``, or ``make priors``).

For every device of ``data/devices.csv`` with a profile name:

1. the cost model's constants for that chip (its generation's per-class efficiencies, memory
   efficiency and per-operator time at the chip's fp16 peak and bandwidth; 6-bit palettized
   weights and fp16 activations, the SD-2.1 deployment) become a ``roofline`` profile, so the
   search prices a block from its analytic operators (``latency_models.features``) with the
   same formula the fit used (p-norm roofline per operator plus a per-operator time);
2. *distillation*: the analytic operators of a block are not the MIL program's (GroupNorm is one
   operator there and ~8 in MIL, layout copies differ), so the constants are then fitted (MAP,
   log-sd 0.5 around step 1) to the cost model's prices of temponas' own blocks computed from
   their converted MIL programs (``probe:*`` programs of ``data/programs.csv``: the default
   space's probes, calibration neighbours and the SD-2.1 blocks);
3. network = ``alpha * sum(blocks) + beta`` with ``alpha`` the chip's offset and ``beta`` the
   per-program floor; the interval is the 90 % predictive band of a network of an unseen family
   measured by an unseen source (the SD-2.1 UNet as the example), plus the distillation error.

Every profile carries the cross-family validation numbers in ``metadata["validation"]`` (and
the leave-one-family-out accuracy in ``metadata["heldout"]["network"]``, the key search
reports print).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from common.fsio import atomic_write_text
from latency_models._roofline import PARAMS, RooflineModel
from latency_models.ane.costmodel import (
    DEFAULT_HYPER,
    NEW,
    P_ROOFLINE,
    CostModel,
    Hyper,
    fit,
    new_row,
)
from latency_models.ane.fitset import ACT_BYTES, DATA_DIR, GENERATIONS, FitSet, load_fitset
from latency_models.composition import Composition
from latency_models.features import COMPUTE_CLASSES, OpClass
from search_space.arch import ArchConfig
from search_space.geometry import BlockSignature
from search_space.presets import default_task, get_backbone

PRIOR_PRECISION = "lut6"
WEIGHT_BITS = 6
PROFILE_DIR = Path(__file__).resolve().parent.parent / "profiles"
DISTILL_LOG_SD = 0.5
Z90 = 1.645


def sd21_image_arch() -> ArchConfig:
    """SD-2.1-base UNet as one image call: batch 2 (CFG), 64x64 latent, T = 1, no temporal layers."""
    bb = get_backbone("sd21")
    task = default_task("sd21").replace(num_frames=1, batch=2, latent_height=64, latent_width=64)
    return ArchConfig.create(bb.name, task, {}, bb.stage_ids)


def cost_constants(model: CostModel, chip: str) -> dict[str, float]:
    """Roofline constants of the cost model for ``chip`` (before distillation)."""
    c = model.fs.chips[chip]
    g = c.generation
    mem = math.exp(model.param("mem") + model.param(f"memg:{g}")) * c.bandwidth_gbs
    out = {}
    for cl in COMPUTE_CLASSES:
        n = cl.name.lower()
        eff = math.exp(model.param(f"eff:{n}") + model.param(f"effg:{g}:{n}"))
        out[f"{n}_ms_per_gflop"] = 1.0 / (c.peak_tflops_fp16 * eff)
    for cl in OpClass:
        n = cl.name.lower()
        out[f"{n}_ms_per_mact"] = ACT_BYTES[PRIOR_PRECISION] * math.exp(model.param(f"act:{n}")) / mem
    out["ms_per_mweight"] = WEIGHT_BITS / 8 * math.exp(model.param("wt")) / mem
    out["ms_per_op"] = math.exp(model.param("op") + model.param(f"opg:{g}"))
    out["ms_per_block"] = 0.0
    return out


def probe_programs(fs: FitSet) -> tuple[list[str], list[BlockSignature]]:
    names, sigs = [], []
    for name, prog in sorted(fs.programs.items()):
        sig = prog.meta.get("signature", "")
        if name.startswith("probe:") and name.endswith(f"@{PRIOR_PRECISION}") and sig:
            names.append(name)
            sigs.append(BlockSignature.from_dict(json.loads(sig), name))
    return names, sigs


def distill(start: dict[str, float], sigs: list[BlockSignature], teacher_ms: np.ndarray) -> RooflineModel:
    """Roofline constants fitted to ``teacher_ms`` of ``sigs`` (MAP around ``start``)."""
    from scipy.optimize import least_squares

    names = [n for n in PARAMS if start.get(n, 0.0) > 0]
    k0 = np.log([start[n] for n in names])
    m = RooflineModel(p=P_ROOFLINE)
    y = np.log(teacher_ms)

    def res(z: np.ndarray) -> np.ndarray:
        m.set_constants({**start, **dict(zip(names, np.exp(z)))})
        return np.concatenate([np.log(m.block_ms(sigs)) - y, (z - k0) / DISTILL_LOG_SD])

    sol = least_squares(res, k0, max_nfev=200)
    m.set_constants({**start, **dict(zip(names, np.exp(sol.x)))})
    return m


def _validation_meta(val: dict[str, Any]) -> dict[str, Any]:
    keys = ("families", "rows_included", "rows_excluded", "lofo_median_abs_pct", "lofo_p90_abs_pct",
            "within_family_spearman_min", "interval_coverage_90", "lodo_median_abs_pct",
            "lodo_p90_abs_pct", "lodo_interval_coverage_90", "sd_excluded_median_abs_pct",
            "n_families_meeting_target", "families_meeting_target")
    out = {k: val[k] for k in keys if k in val}
    out["how"] = ("leave-one-family-out / leave-one-chip-out / SD rows excluded, on the Apple fit set "
                  "(python benchmarks/prior_transfer.py --json)")
    return out


def _heldout(held) -> dict[str, Any]:
    """LOFO predictions in the schema of a calibrated model's ``heldout.network``."""
    from scipy import stats

    rel = held.pred / held.measured - 1.0
    return {"n": len(rel), "mape_pct": float(100 * np.mean(np.abs(rel))),
            "median_abs_pct": float(100 * np.median(np.abs(rel))),
            "within_10pct": float(np.mean(np.abs(rel) <= 0.10)),
            "kendall": float(stats.kendalltau(held.pred, held.measured).statistic),
            "spearman": float(stats.spearmanr(held.pred, held.measured).statistic),
            "what": "leave-one-family-out predictions of published Core ML latencies (not this device's own)"}


def build_profile(model: CostModel, device: str, validation: dict[str, Any], heldout: dict[str, Any],
                  sigs: list[BlockSignature], teacher_programs: list[str]) -> RooflineModel:
    """The roofline prior of ``device`` (see the module docstring); ``validation``/``heldout``
    are stored in its metadata."""
    fs = model.fs
    d = fs.devices[device]
    chip = fs.chips[d["chip"]]
    start = cost_constants(model, chip.chip)
    teacher = model.ops_ms(teacher_programs, chip.chip)
    student = distill(start, sigs, teacher)
    err = np.log(student.block_ms(sigs) / teacher)
    sd21 = "sd21_unet@lut6"
    pr = model.predict([new_row(sd21, chip.chip)])
    log_sd = float(math.sqrt(pr["log_sd"][0] ** 2 + np.mean(err ** 2)))
    student.interval_log = (-Z90 * log_sd, Z90 * log_sd)
    student.interval_source = (f"90% predictive band of the Neural Engine cost model for a network of an unseen "
                               f"family and source (log sd {pr['log_sd'][0]:.3f}) plus the distillation error "
                               f"({math.sqrt(np.mean(err ** 2)):.3f})")
    floor = math.exp(model.param("floor") + model.param(f"floor:{NEW}"))
    student.composition = Composition(math.exp(model.param(f"chip:{chip.chip}")), floor, 0, 0.0, "prior")
    rows_chip = [r for r in fs.included if r.chip == chip.chip]
    rows_gen = [r for r in fs.included if fs.chips[r.chip].generation == chip.generation]
    borrowed = ("" if rows_chip else
                f"NO published row on the {chip.chip}: its Neural Engine generation {chip.generation} "
                + (f"has {len(rows_gen)} rows on other chips" if rows_gen else
                   f"has none either: efficiencies continue the random walk from the neighbouring "
                   f"generation {GENERATIONS[GENERATIONS.index(chip.generation) - 1]} (wider interval)")
                + "; device facts as listed.")
    from latency_models.ane.validate import SD_FAMILY

    sd_rows = [r for r in fs.included if r.family == SD_FAMILY and r.device == device]
    student.set_metadata(
        kind="prior", device=device, device_name=d["name"], chip=chip.chip, ane_generation=chip.generation,
        backend="coreml", compute_units="cpu_and_ne", os="any (per-source OS offsets averaged out)",
        precision="lut6 (6-bit palettized weights, fp16 activations)", calibrated=False,
        fitted_on={"source": f"Apple fit set: {len(fs.included)} published Core ML latencies of "
                             f"{len({r.family for r in fs.included})} network families "
                             "(latency_models/ane/data/measurements.csv)",
                   "rows_on_this_chip": len(rows_chip), "rows_on_this_generation": len(rows_gen),
                   "published_sd21_ms": sd_rows[0].latency_ms if sd_rows else None,
                   "predicted_sd21_ms": round(float(pr["mean_ms"][0]), 3),
                   "profile_sd21_ms": round(float(student.predict(sd21_image_arch()).mean_ms), 3),
                   **({"borrowed": borrowed} if borrowed else {})},
        validation=validation, heldout=heldout,
        distillation={"blocks": len(sigs), "median_abs_pct": float(100 * np.median(np.abs(np.expm1(err)))),
                      "p90_abs_pct": float(100 * np.percentile(np.abs(np.expm1(err)), 90))},
        device_facts={"peak_tflops_fp16": chip.peak_tflops_fp16, "bandwidth_gbs": chip.bandwidth_gbs,
                      "int8_tops_claim": chip.int8_tops_claim, "facts": chip.facts},
        provenance=("PRIOR from the Neural Engine cost model fitted across network families on published "
                    "Core ML latencies (docs/latency.md), not calibrated on the user's measurements. "
                    + borrowed))
    return student


def build_profiles(out_dir: Path = PROFILE_DIR, data: Path = DATA_DIR, h: Hyper = DEFAULT_HYPER,
                   val: dict[str, Any] | None = None, progress=None) -> dict[str, dict]:
    from latency_models.ane.validate import validate

    fs = load_fitset(data)
    val = val if val is not None else validate(fs, h, progress)
    model = fit(fs, None, h)
    teacher_programs, sigs = probe_programs(fs)
    if not sigs:
        raise ValueError(f"{data}: no probe:* programs (run `make fitset-features`)")
    docs = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    vmeta, hmeta = _validation_meta(val), {"network": _heldout(val["_held"]["lofo"])}
    for device, d in sorted(fs.devices.items()):
        if not d["profile"]:
            continue
        prof = build_profile(model, device, vmeta, hmeta, sigs, teacher_programs)
        doc, _ = prof.to_json_dict()
        docs[d["profile"]] = doc
        atomic_write_text(out_dir / f"{d['profile']}.json",
                          json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return docs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(PROFILE_DIR))
    args = ap.parse_args(argv)
    docs = build_profiles(Path(args.out), progress=lambda g: print(f"  hold out {g}", flush=True))
    for k, d in docs.items():
        fo = d["metadata"]["fitted_on"]
        print(f"{k:14s} {d['metadata']['chip']:8s} rows on chip {fo['rows_on_this_chip']:3d}  "
              f"SD-2.1 published {fo['published_sd21_ms']} predicted {fo['predicted_sd21_ms']} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
