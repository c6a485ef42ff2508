"""``temponas latency …``: probe sets, measurements, Core ML export, fitting, prediction, reports.

Sub-commands: ``probes``, ``measure``, ``export-probes``, ``fit``, ``predict``, ``report``,
``devices``. Heavy imports (torch, coremltools, matplotlib) happen inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from experiments import cli_priors
from search_space.arch import ArchConfig
from search_space.errors import ConfigError
from search_space.presets import default_task, get_backbone, preset_names


# ---- shared helpers ---------------------------------------------------------------------------
def _add_task_args(p: argparse.ArgumentParser, preset_default: str | None = "small") -> None:
    p.add_argument("--preset", default=preset_default,
                   help=f"backbone preset ({', '.join(preset_names())})")
    p.add_argument("--frames", type=int, help="override the task's num_frames (T)")
    p.add_argument("--batch", type=int, help="override the task's batch (2 = CFG)")
    p.add_argument("--height", type=int, help="override latent height")
    p.add_argument("--width", type=int, help="override latent width")
    p.add_argument("--tokens", type=int, help="override the number of text tokens")


def _backbone_task(args: argparse.Namespace):
    bb = get_backbone(args.preset)
    task = default_task(args.preset)
    over = {k: v for k, v in (("num_frames", args.frames), ("batch", args.batch),
                              ("latent_height", args.height), ("latent_width", args.width),
                              ("text_tokens", getattr(args, "tokens", None))) if v is not None}
    return bb, task.replace(**over) if over else task


def _space(args: argparse.Namespace):
    """The search space of the positional CONFIG_OR_PRESET: an experiment YAML (``temponas
    search`` config: backbone, task, space), a YAML holding only a ``space`` section (applied to
    ``--preset``), or a preset name; default: the default space of ``--preset``. ``--frames``
    etc. override the task in every case."""
    from search_space.space import SearchSpace, default_space

    cfg = getattr(args, "config", None)
    if cfg and not Path(cfg).exists() and cfg in preset_names():
        args.preset, cfg = cfg, None
    bb, task = _backbone_task(args)
    if not cfg:
        return default_space(bb, task)
    import yaml

    try:
        data = yaml.safe_load(Path(cfg).read_text(encoding="utf-8")) or {}
    except OSError as e:
        raise ConfigError(f"{cfg}: cannot read ({e.strerror}); give an experiment YAML or a "
                          f"preset ({', '.join(preset_names())})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{cfg}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{cfg}: expected a mapping at the top level")
    if "backbone" in data:  # a full experiment config
        from experiments.config import load_config

        ec = load_config(cfg)
        bb = ec.backbone_spec
        over = {k: v for k, v in (("num_frames", args.frames), ("batch", args.batch),
                                  ("latent_height", args.height), ("latent_width", args.width),
                                  ("text_tokens", getattr(args, "tokens", None))) if v is not None}
        task = ec.video_task.replace(**over) if over else ec.video_task
        return SearchSpace.from_dict(bb, task, dict(ec.space), where=f"{cfg}:space")
    space = data.get("space") if isinstance(data.get("space"), dict) else data
    return SearchSpace.from_dict(bb, task, space, where=f"{cfg}:space")


def _print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


# ---- predict ------------------------------------------------------------------------------------
def _cmd_predict(args: argparse.Namespace) -> int:
    from latency_models import load_latency_model

    model = load_latency_model(args.device)
    arch_file = ArchConfig.load(args.arch) if args.arch else None
    if args.preset is None:
        args.preset = arch_file.backbone if arch_file is not None else "sd21"
    bb, task = _backbone_task(args)
    if arch_file is not None:
        arch = arch_file
        if arch.backbone != bb.name:
            raise ConfigError(f"{args.arch}: arch is for backbone {arch.backbone!r}, not --preset {bb.name!r}")
        over = {k: v for k, v in (("num_frames", args.frames), ("batch", args.batch),
                                  ("latent_height", args.height), ("latent_width", args.width),
                                  ("text_tokens", args.tokens)) if v is not None}
        if over:  # the arch's own task with the overrides
            arch = arch.with_task(arch.task.replace(**over))
    else:
        arch = ArchConfig.create(bb.name, task, {}, bb.stage_ids)
    est = model.predict(arch, bb)
    meta = model.metadata
    if args.json:
        _print_json({"device": meta.get("device"), "kind": meta.get("kind"), "arch_id": arch.arch_id,
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


# ---- devices ------------------------------------------------------------------------------------
def _cmd_devices(args: argparse.Namespace) -> int:
    from latency_models import load_latency_model, profile_names

    rows = []
    for name in profile_names():
        meta = load_latency_model(name).metadata
        fo = meta.get("fitted_on") or {}
        rows.append({"profile": name, "device": meta.get("device_name", meta.get("device")),
                     "chip": meta.get("chip"), "kind": meta.get("kind"),
                     "predictor": meta.get("predictor"), "fitted_on": fo,
                     "provenance": meta.get("provenance", ""), "validation": cli_priors.validation_line(meta),
                     "validation_numbers": meta.get("validation")})
    if args.json:
        _print_json(rows)
        return 0
    print(f"{'profile':14s} {'device':20s} {'chip':8s} {'kind':6s} fitted on")
    for r in rows:
        fo = r["fitted_on"]
        what = (f"published SD-2.1-base {fo['published_ms']} ms/step (Apple)" if fo.get("published_ms")
                else fo.get("source", ""))
        print(f"{r['profile']:14s} {r['device']!s:20s} {r['chip']!s:8s} {r['kind']!s:6s} {what}")
        if r["validation"]:
            print(r["validation"])
    print("priors are NOT calibrated on your device; calibrate with `temponas latency fit` "
          "(see docs/latency.md)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    lat = subparsers.add_parser("latency", help="latency probes, measurements, predictors, device profiles")
    sub = lat.add_subparsers(dest="latency_command", metavar="SUBCOMMAND")
    sub.required = True

    p = sub.add_parser("predict", help="predict the latency of an architecture on a device")
    p.add_argument("--device", "--model", dest="device", required=True,
                   help="device profile name (see `temponas latency devices`) or a model directory")
    _add_task_args(p, None)
    p.add_argument("--arch", help="arch JSON (default: the image backbone, no temporal layers)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("devices", help="list shipped device profiles and what they were fitted on")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_devices)

    for extra in _EXTRA:
        extra(sub)


_EXTRA: list = []  # further sub-command registrars (appended below as they are defined)
_EXTRA.append(cli_priors.register)  # fitset, build-priors (Apple Neural Engine priors)


# ---- probes -------------------------------------------------------------------------------------
def _probe_items(args: argparse.Namespace, space) -> tuple[list, list]:
    """The probe set of ``space`` (``--temporal-only``, ``--limit``) and ``--calibration``
    neighbours, as two lists of :class:`~latency_models.probes.Probe`."""
    from latency_models.probes import calibration_probes, probes

    if args.calibration < 0:
        raise ConfigError(f"--calibration: must be >= 0, got {args.calibration}")
    items = probes(space, include_image=not args.temporal_only)
    if getattr(args, "limit", 0):
        items = items[: args.limit]
    cal = calibration_probes(space, args.calibration, args.seed) if args.calibration else []
    return items, cal


def _add_calibration_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calibration", type=int, default=0, metavar="N",
                   help="add N calibration blocks from neighbours of the space (other widths, "
                        "latent sizes, frame counts, heads, kernels): they let a predictor "
                        "generalize to signatures that were never measured")


def _cmd_probes(args: argparse.Namespace) -> int:
    from latency_models.probes import iter_signature_rows

    space = _space(args)
    items, cal = _probe_items(args, space)
    items = items + cal
    rows = list(iter_signature_rows(items))
    if args.json:
        _print_json(rows)
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


def _reg_probes(sub) -> None:
    p = sub.add_parser("probes", help="list the distinct block signatures a search space produces")
    p.add_argument("config", nargs="?", metavar="CONFIG_OR_PRESET",
                   help="experiment YAML, a YAML with a 'space' section, or a preset name "
                        "(default: the default space of --preset)")
    _add_task_args(p)
    p.add_argument("--temporal-only", action="store_true", help="leave out the fixed image blocks")
    _add_calibration_arg(p)
    p.add_argument("--seed", type=int, default=0, help="calibration draw")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_probes)


_EXTRA.append(_reg_probes)


# ---- measure ------------------------------------------------------------------------------------
def _cmd_measure(args: argparse.Namespace) -> int:
    from latency_models.backends.torch_cpu import TimingPolicy, TorchCpuBackend, measure
    from latency_models.measurements import Measurements
    from latency_models.probes import random_archs

    space = _space(args)
    if args.threads < 1:
        raise ConfigError(f"--threads: must be >= 1, got {args.threads}")
    if args.repeats < 1:
        raise ConfigError(f"--repeats: must be >= 1, got {args.repeats}")
    k = args.calibration_repeats
    if k is not None and not 1 <= k <= args.repeats:
        raise ConfigError(f"--calibration-repeats: must be between 1 and --repeats "
                          f"({args.repeats}), got {k}")
    items, cal = ([], []) if args.networks_only else _probe_items(args, space)
    archs = [(space.backbone, a) for a in random_archs(space, args.networks, args.seed)]
    policy = TimingPolicy(warmup=args.warmup, min_runs=args.min_runs, max_runs=args.max_runs,
                          rel_precision=args.precision, time_limit_s=args.time_limit)
    backend = TorchCpuBackend(args.threads, policy, clock=args.clock, paired=not args.no_reference)
    out = Measurements(backend.info, source=args.out)
    done = [0]

    def checkpoint(row) -> None:  # keep what was measured if the run is interrupted
        (out.blocks if hasattr(row, "sig") else out.networks).append(row)
        done[0] += 1
        if done[0] % 10 == 0:
            out.to_csv(args.out)

    measure(backend, [p.sig for p in items], archs, repeats=args.repeats, seed=args.seed,
            progress=not args.no_progress, desc=f"torch-cpu t{args.threads}", on_row=checkpoint,
            calibration=[p.sig for p in cal], calibration_repeats=args.calibration_repeats)
    out.to_csv(args.out)
    nf = out.noise_floor_pct()
    print(f"wrote {len(out.blocks)} block and {len(out.networks)} network rows to {args.out}"
          + (f"; noise floor {nf:.1f}% (median CV of repeats)" if nf is not None else ""))
    return 0


def _reg_measure(sub) -> None:
    p = sub.add_parser("measure", help="time the probe set (and random whole networks) with torch on this CPU")
    p.add_argument("config", nargs="?", metavar="CONFIG_OR_PRESET",
                   help="experiment YAML, a YAML with a 'space' section, or a preset name")
    _add_task_args(p)
    p.add_argument("--out", required=True, help="measurement CSV to write")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (pinned)")
    p.add_argument("--repeats", type=int, default=1, help="interleaved repeats (noise floor)")
    p.add_argument("--networks", type=int, default=0, help="also time N random whole architectures")
    p.add_argument("--networks-only", action="store_true")
    p.add_argument("--temporal-only", action="store_true")
    _add_calibration_arg(p)
    p.add_argument("--calibration-repeats", type=int, default=None, metavar="K",
                   help="repeats of each calibration block (default: --repeats); fewer is fine, "
                        "a fit sees hundreds of them")
    p.add_argument("--limit", type=int, default=0, help="only the first N probes")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--min-runs", type=int, default=7)
    p.add_argument("--max-runs", type=int, default=200)
    p.add_argument("--precision", type=float, default=0.01,
                   help="stop when the median's standard error is below this fraction")
    p.add_argument("--time-limit", type=float, default=5.0, help="seconds per probe")
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                   help="wall: elapsed time (a dedicated machine); cpu: CPU time of the timing "
                        "thread/process, robust on a machine shared with other jobs")
    p.add_argument("--no-reference", action="store_true",
                   help="do not pair every timed call with the reference op (no ref_ms column, "
                        "so fits cannot divide out the machine's speed drift)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_measure)


_EXTRA.append(_reg_measure)


# ---- fit ----------------------------------------------------------------------------------------
def _fmt_acc(acc: dict | None) -> str:
    if not acc:
        return "n/a"
    return (f"n={acc['n']} ±5% {acc['within_5pct']:.0%} ±10% {acc['within_10pct']:.0%} "
            f"MAPE {acc['mape_pct']:.1f}% RMSPE {acc['rmspe_pct']:.1f}% "
            f"Spearman {acc['spearman']:.3f} Kendall {acc['kendall']:.3f}")


def _cmd_fit(args: argparse.Namespace) -> int:
    from latency_models import create_model, load_latency_model
    from latency_models._roofline import RooflineModel
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


def _reg_fit(sub) -> None:
    p = sub.add_parser("fit", help="fit a latency predictor on measurement CSV(s) of one device")
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
    p.set_defaults(func=_cmd_fit)


_EXTRA.append(_reg_fit)


# ---- report -------------------------------------------------------------------------------------
def _cmd_report(args: argparse.Namespace) -> int:
    from latency_models import load_latency_model
    from latency_models.measurements import read_many
    from latency_models.report import evaluate, parity_plot, public, write_json

    model = load_latency_model(args.model)
    m = read_many(args.measurements)
    res = evaluate(model, m)
    out = Path(args.out) if args.out else None
    if out is not None:
        write_json(public(res), out / "latency_report.json")
        parity_plot(res, out / "parity.png",
                    title=f"{model.metadata.get('predictor')} ({model.metadata.get('device')}) vs {m.source}")
    if args.json:
        _print_json(public(res))
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


def _reg_report(sub) -> None:
    p = sub.add_parser("report", help="accuracy of a model on held-out measurements (+ parity plot)")
    p.add_argument("model", help="model directory or device profile name")
    p.add_argument("measurements", nargs="+", help="measurement CSV(s) NOT used for fitting")
    p.add_argument("--out", help="directory for latency_report.json and parity.png")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_report)


_EXTRA.append(_reg_report)


# ---- export-probes ------------------------------------------------------------------------------
def _cmd_export(args: argparse.Namespace) -> int:
    from latency_models.backends.coreml_export import export_bundle
    from latency_models.probes import random_archs

    space = _space(args)
    items, cal = _probe_items(args, space)
    items = items + cal
    nets = [(space.backbone, a) for a in random_archs(space, args.networks, args.seed)]
    out = Path(args.out)
    if (out / "manifest.json").exists() and not args.force:
        raise ConfigError(f"{out}: already holds a probe bundle (use --force to overwrite)")
    man = export_bundle(out, items, nets, target=args.target, progress=not args.no_progress,
                        description={"preset": space.backbone.name, "task": space.task.to_dict(),
                                     "space": space.to_dict()})
    print(f"wrote {len(man['probes'])} Core ML packages ({args.target}, fp16 mlprogram) to {out}")
    print(f"on a Mac: python {out / 'run_on_device.py'} {out} --compute-units cpu_and_ne --repeats 3")
    print(f"then:     temponas latency fit {out}/measurements_cpu_and_ne.csv --prior iphone16pm --out MODEL_DIR")
    return 0


def _reg_export(sub) -> None:
    p = sub.add_parser("export-probes", help="write a Core ML probe bundle (+ macOS runner script)")
    p.add_argument("config", nargs="?", metavar="CONFIG_OR_PRESET",
                   help="experiment YAML, a YAML with a 'space' section, or a preset name")
    _add_task_args(p)
    p.add_argument("--out", required=True, help="bundle directory")
    p.add_argument("--target", default="iOS18", choices=["iOS17", "iOS18"],
                   help="minimum deployment target (iOS18 has a native SDPA op)")
    p.add_argument("--networks", type=int, default=0,
                   help="also export N random whole networks (composition correction)")
    p.add_argument("--temporal-only", action="store_true")
    _add_calibration_arg(p)
    p.add_argument("--limit", type=int, default=0, help="only the first N probes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_export)


_EXTRA.append(_reg_export)
