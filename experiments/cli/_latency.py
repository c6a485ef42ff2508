"""``temponas latency …``: device profiles, prediction, probe sets, fitting and reports.

Sub-commands here: ``devices``, ``predict``, ``probes``, ``fit``, ``report``; the two that time
or convert blocks (``measure``, ``export-probes``) are in ``_latency_measure``. Heavy imports
(torch, coremltools, matplotlib) happen inside the handlers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from experiments.cli._args import (
    add_calibration_arg,
    add_config_or_preset,
    add_task_args,
    at_least,
    backbone_task,
    in_range,
    print_json,
    resolve_target,
    task_overrides,
)
from experiments.cli._base import Command
from experiments.cli._latency_priors import validation_line
from search_space.arch import ArchConfig
from search_space.errors import ConfigError

GROUP_HELP = "latency probes, measurements, predictors, device profiles"


def probe_items(args: argparse.Namespace, space) -> tuple[list, list]:
    """The probe set of ``space`` (``--temporal-only``, ``--limit``) and ``--calibration``
    neighbours, as two lists of :class:`~latency_models.probes.Probe`."""
    from latency_models.probes import calibration_probes, probes

    at_least("--calibration", args.calibration, 0)
    in_range("--calibration", args.calibration, "calibration")
    in_range("--limit", getattr(args, "limit", None), "limit")
    items = probes(space, include_image=not args.temporal_only)
    if getattr(args, "limit", 0):
        items = items[: args.limit]
    cal = calibration_probes(space, args.calibration, args.seed) if args.calibration else []
    return items, cal


def _json(obj) -> None:
    print_json(obj, sort_keys=True, default=str)


def _fmt_acc(acc: dict | None) -> str:
    if not acc:
        return "n/a"
    return (f"n={acc['n']} ±5% {acc['within_5pct']:.0%} ±10% {acc['within_10pct']:.0%} "
            f"MAPE {acc['mape_pct']:.1f}% RMSPE {acc['rmspe_pct']:.1f}% "
            f"Spearman {acc['spearman']:.3f} Kendall {acc['kendall']:.3f}")


class LatencyPredict(Command):
    """``temponas latency predict --device NAME``."""

    help = "predict the latency of an architecture on a device"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--device", "--model", dest="device", required=True,
                       help="device profile name (see `temponas latency devices`) or a model directory")
        add_task_args(p, None)
        p.add_argument("--arch", help="arch JSON (default: the image backbone, no temporal layers)")
        p.add_argument("--json", action="store_true")

    def take_action(self, args: argparse.Namespace) -> int:
        from latency_models import load_latency_model

        model = load_latency_model(args.device)
        arch_file = ArchConfig.load(args.arch) if args.arch else None
        if args.preset is None:
            args.preset = arch_file.backbone if arch_file is not None else "sd21"
        bb, task = backbone_task(args)
        if arch_file is not None:
            arch = arch_file
            if arch.backbone != bb.name:
                raise ConfigError(f"{args.arch}: arch is for backbone {arch.backbone!r}, not --preset {bb.name!r}")
            over = task_overrides(args)
            if over:  # the arch's own task with the overrides
                arch = arch.with_task(arch.task.replace(**over))
        else:
            arch = ArchConfig.create(bb.name, task, {}, bb.stage_ids)
        est = model.predict(arch, bb)
        meta = model.metadata
        if args.json:
            _json({"device": meta.get("device"), "kind": meta.get("kind"), "arch_id": arch.arch_id,
                   "task": arch.task.to_dict(), "mean_ms": est.mean_ms, "low_ms": est.low_ms,
                   "high_ms": est.high_ms, "per_stage_ms": dict(est.per_stage_ms)})
            return 0
        t = arch.task
        print(f"device {meta.get('device')} ({meta.get('kind')}, {meta.get('predictor')}); "
              f"{bb.name} B={t.batch} T={t.num_frames} {t.latent_height}x{t.latent_width} "
              f"arch {arch.arch_id} ({arch.num_temporal_blocks} temporal blocks)")
        print(f"latency {est.mean_ms:.1f} ms  [{est.low_ms:.1f}, {est.high_ms:.1f}]")
        for s, v in est.per_stage_ms.items():
            print(f"  {s:6s} {v:9.2f} ms")
        if meta.get("kind") == "prior":
            print("note: this device profile is a PRIOR (not calibrated on your measurements)")
        return 0


class LatencyDevices(Command):
    """``temponas latency devices``."""

    help = "list shipped device profiles and what they were fitted on"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true")

    def take_action(self, args: argparse.Namespace) -> int:
        from latency_models import load_latency_model, profile_names

        rows = []
        for name in profile_names():
            meta = load_latency_model(name).metadata
            fo = meta.get("fitted_on") or {}
            rows.append({"profile": name, "device": meta.get("device_name", meta.get("device")),
                         "chip": meta.get("chip"), "kind": meta.get("kind"),
                         "predictor": meta.get("predictor"), "fitted_on": fo,
                         "provenance": meta.get("provenance", ""),
                         "validation": validation_line(meta),
                         "validation_numbers": meta.get("validation")})
        if args.json:
            _json(rows)
            return 0
        print(f"{'profile':14s} {'device':20s} {'chip':8s} {'kind':6s} fitted on")
        for r in rows:
            fo = r["fitted_on"]
            pub = fo.get("published_sd21_ms") or fo.get("published_ms")  # new / older profiles
            what = (f"published SD-2.1-base {pub} ms/step (Apple)" if pub
                    else fo.get("borrowed") and "no published row: borrowed" or fo.get("source", ""))
            print(f"{r['profile']:14s} {r['device']!s:20s} {r['chip']!s:8s} {r['kind']!s:6s} {what}")
            if r["validation"]:
                print(r["validation"])
        print("priors are NOT calibrated on your device; calibrate with `temponas latency fit` "
              "(see docs/latency.md)")
        return 0


class LatencyProbes(Command):
    """``temponas latency probes [CONFIG_OR_PRESET]``."""

    help = "list the distinct block signatures a search space produces"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        add_config_or_preset(p, "experiment YAML, a YAML with a 'space' section, or a preset name "
                                "(default: the default space of --preset)")
        add_task_args(p)
        p.add_argument("--temporal-only", action="store_true", help="leave out the fixed image blocks")
        add_calibration_arg(p)
        p.add_argument("--seed", type=int, default=0, help="calibration draw")
        p.add_argument("--json", action="store_true")

    def take_action(self, args: argparse.Namespace) -> int:
        from latency_models.probes import iter_signature_rows

        space = resolve_target(args).space
        items, cal = probe_items(args, space)
        items = items + cal
        rows = list(iter_signature_rows(items))
        if args.json:
            _json(rows)
            return 0
        print(f"{len(items)} distinct block signatures for {space.backbone.name} "
              f"(T={space.task.num_frames}, {space.task.latent_height}x{space.task.latent_width}, "
              f"B={space.task.batch}); the space holds {space.size():,} architectures")
        print(f"{'probe_id':12s} {'op':22s} {'C':>5s} {'HxW':>7s} {'heads':>5s} {'kt':>3s} {'ks':>3s} stages")
        for p in items:
            s = p.sig
            print(f"{p.id:12s} {p.op_name:22s} {s.in_channels + s.skip_channels:5d} "
                  f"{s.height:3d}x{s.width:<3d} {s.heads:5d} {s.kernel_t:3d} {s.kernel_s:3d} {','.join(p.stages)}")
        return 0


class LatencyFit(Command):
    """``temponas latency fit CSV... --out DIR``."""

    help = "fit a latency predictor on measurement CSV(s) of one device"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("measurements", nargs="+", help="measurement CSV file(s), one device")
        p.add_argument("--predictor", default="roofline", choices=["lut", "roofline", "regression"])
        p.add_argument("--prior", help="roofline only: calibrate from this profile/model (few-shot)")
        p.add_argument("--prior-log-sd", type=float, default=0.5,
                       help="prior width in log units (smaller = trust the prior more)")
        p.add_argument("--no-drift-correct", action="store_true",
                       help="fit the raw latency_ms even where ref_ms records the machine's drift")
        p.add_argument("--folds", type=int, default=5, help="cross-validation folds for held-out accuracy")
        p.add_argument("--no-progress", action="store_true")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--out", required=True, help="directory to write model.json (+ arrays.npz)")

    def take_action(self, args: argparse.Namespace) -> int:
        from latency_models import RooflineModel, create_model, load_latency_model
        from latency_models.measurements import read_many

        m = read_many(args.measurements)
        m.correct_drift = not args.no_drift_correct
        if args.prior:
            if args.predictor != "roofline":
                raise ConfigError("--prior: only the roofline predictor calibrates from a prior")
            prior = load_latency_model(args.prior)
            if not isinstance(prior, RooflineModel):
                raise ConfigError(f"--prior {args.prior}: not a roofline model/profile")
            model = RooflineModel.calibrating(prior, prior_log_sd=args.prior_log_sd)
        else:
            model = create_model(args.predictor)
        model.fit(m, folds=args.folds, seed=args.seed, progress=not args.no_progress)
        if args.prior:
            model.set_metadata(calibrated_from=str(args.prior))
        model.save(args.out)
        meta = model.metadata
        h = meta.get("heldout", {})
        print(f"fitted {model.name} on {meta['fitted_on']['blocks']} block signatures and "
              f"{meta['fitted_on']['networks']} networks of {meta['device']} -> {args.out}")
        print(f"  held-out blocks   ({h.get('folds')}-fold CV): {_fmt_acc(h.get('block'))}")
        print(f"  held-out networks ({h.get('folds')}-fold CV): {_fmt_acc(h.get('network'))}")
        nf = meta.get("noise_floor_pct")
        c = model.composition
        print(f"  composition ({c.form}): network = {c.alpha:.4f} x sum(blocks) + {c.beta:.3f} ms"
              + (f" + {c.gamma:.3f} ms x temporal blocks" if c.gamma else "")
              + f"; interval x[{meta['interval']['low_factor']:.3f}, "
              f"{meta['interval']['high_factor']:.3f}] ({meta['interval']['source']})"
              + (f"; noise floor {nf:.1f}%" if nf is not None else ""))
        return 0


class LatencyReport(Command):
    """``temponas latency report MODEL CSV...``."""

    help = "accuracy of a model on held-out measurements (+ parity plot)"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("model", help="model directory or device profile name")
        p.add_argument("measurements", nargs="+", help="measurement CSV(s) NOT used for fitting")
        p.add_argument("--out", help="directory for latency_report.json and parity.png")
        p.add_argument("--json", action="store_true")

    def take_action(self, args: argparse.Namespace) -> int:
        from common.fsio import atomic_write_json, json_safe
        from latency_models import load_latency_model
        from latency_models.measurements import read_many
        from latency_models.report import evaluate, parity_plot, public

        model = load_latency_model(args.model)
        m = read_many(args.measurements)
        res = evaluate(model, m)
        out = Path(args.out) if args.out else None
        if out is not None:
            atomic_write_json(out / "latency_report.json", json_safe(public(res)))
            parity_plot(res, out / "parity.png",
                        title=f"{model.metadata.get('predictor')} ({model.metadata.get('device')}) vs {m.source}")
        if args.json:
            _json(public(res))
            return 0
        if res.get("warning"):
            print(f"warning: {res['warning']}")
        print(f"blocks:   {_fmt_acc(res.get('block'))}")
        print(f"networks: {_fmt_acc(res.get('network'))}"
              + (f", interval coverage {res['network']['interval_coverage']:.0%}" if res.get("network") else ""))
        nf = res.get("noise_floor_pct")
        print(f"noise floor (repeats): {nf:.1f}%" if nf is not None else "noise floor: no repeated rows")
        if res.get("by_op"):
            print("residuals by block type (median signed error, MAPE):")
            for op, r in res["by_op"].items():
                print(f"  {op:22s} n={r['n']:3d} {r['median_rel_error_pct']:+7.1f}% {r['mape_pct']:6.1f}%")
        if out is not None:
            print(f"wrote {out / 'latency_report.json'} and {out / 'parity.png'}")
        return 0
