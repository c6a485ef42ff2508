"""``temponas proxies``: list the quality evaluators, preview the bundled video data, and audit
how well each proxy ranks candidates compared with short training.

``temponas proxies list [--json]``
``temponas proxies preview-data [CONFIG_OR_PRESET] --out FILE.png|FILE.gif [--preset NAME]
[--split train|val] [--n N] [--decoded] [--options FILE.yaml]``
``temponas proxies audit CONFIG_OR_PRESET --n-archs N --budgets A,B --seeds S --out DIR
[--proxies a,b,...] [--options FILE.yaml] [--workers W] [--sample-seed A --report-sample-seed B]``
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from experiments.cli._args import (
    add_config_or_preset,
    add_preset,
    at_least,
    in_range,
    int_list,
    print_json,
    read_options,
    resolve_target,
)
from experiments.cli._base import Command
from search_space.errors import ConfigError

GROUP_HELP = "quality proxies: list, preview data, fidelity audit"
GROUP_DESCRIPTION = ("Quality evaluators: list them, look at the bundled video data, and audit "
                     "proxy fidelity against short training.")


def _seeds(text: str) -> tuple[int, ...]:
    """``--seeds``: a count S (seeds 0..S-1) or a comma list."""
    vals = int_list(text, "--seeds")
    if len(vals) == 1 and "," not in text:
        if vals[0] < 1:
            raise ConfigError(f"--seeds: a count must be >= 1, got {vals[0]}")
        return tuple(range(vals[0]))
    return vals


def _split_options(data: dict[str, Any], where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(proxy options, short_train options) from an --options file."""
    if set(data) <= {"proxies", "short_train"} and data:
        for k, v in data.items():
            if not isinstance(v, dict):
                raise ConfigError(f"{where}.{k}: expected a mapping")
        return dict(data.get("proxies") or {}), dict(data.get("short_train") or {})
    shared = {k: v for k, v in data.items() if k in ("scale", "data", "pretrain", "batch",
                                                      "threads", "spatial", "weights",
                                                      "cache_dir")}
    return shared, dict(data)


class ProxiesList(Command):
    """``temponas proxies list``."""

    help = "registered evaluators"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true")

    def take_action(self, args: argparse.Namespace) -> int:
        from evaluators.registry import BUILTIN, DEFAULT_FAST_PROXY, available, resolve

        rows = []
        for name in available():
            cls = resolve(name)
            rows.append({"name": name, "target": BUILTIN.get(name, "entry point"),
                         "direction": getattr(getattr(cls, "direction", None), "value", "?"),
                         "uses_budget": bool(getattr(cls, "uses_budget", False)),
                         "default_fast_proxy": name == DEFAULT_FAST_PROXY,
                         "summary": (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""})
        if args.json:
            print_json(rows, indent=1)
            return 0
        for r in rows:
            mark = " (default fast proxy)" if r["default_fast_proxy"] else ""
            print(f"{r['name']:<12} {r['direction']:<9} {'budget' if r['uses_budget'] else 'zero-cost':<9} "
                  f"{r['summary']}{mark}")
        return 0


class ProxiesPreviewData(Command):
    """``temponas proxies preview-data [CONFIG_OR_PRESET] --out FILE.png|FILE.gif``."""

    help = "write a PNG strip or GIF of the videos an evaluator trains and scores on"
    description = ("The videos of the evaluator options of CONFIG (an experiment YAML: the bundled "
                   "set, or your clips) or of --options, as a PNG strip or an animated GIF; "
                   "--decoded shows what their latents decode to (your VAE's decoder, or the "
                   "inverse of the fixed encoding).")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        add_config_or_preset(p, "an experiment YAML (its backbone, task and evaluator options) or "
                                "a backbone preset (default: --preset)")
        p.add_argument("--out", required=True, metavar="FILE", help="*.png (strip) or *.gif")
        add_preset(p, "snapgen_v", "sets the text width")
        p.add_argument("--split", default="train", choices=("train", "val"))
        p.add_argument("--n", type=int, default=8, help="number of videos")
        p.add_argument("--decoded", action="store_true",
                       help="show what the latents decode to (VAE decoder or fixed encoding)")
        p.add_argument("--options", metavar="FILE.yaml",
                       help="evaluator options (scale/data); they replace CONFIG's")

    def take_action(self, args: argparse.Namespace) -> int:
        from evaluators import preview_frames
        from evaluators.data import save_frames

        at_least("--n", args.n)
        in_range("--n", args.n, "videos")
        if not args.out.lower().endswith((".png", ".gif")):
            raise ConfigError(f"--out: {args.out!r} must end in .png or .gif")
        target = resolve_target(args, space_files=False)
        options = read_options(args.options) if args.options else target.evaluator_options
        where = args.options or (f"{args.config}: evaluator.options" if target.evaluator_options else "options")
        frames, sources, g = preview_frames(target.backbone, options, split=args.split, n=args.n,
                                            decoded=args.decoded, where=where,
                                            latent_channels=target.space.task.latent_channels)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        save_frames(frames, args.out)
        shown = sorted(set(sources))
        print(f"wrote {args.out} ({len(frames)} {args.split} videos of {g.num_frames} frames, "
              f"{frames.shape[2]}x{frames.shape[3]} px{', decoded' if args.decoded else ''}: "
              f"{', '.join(shown[:8])}{' ...' if len(shown) > 8 else ''})")
        return 0


class ProxiesAudit(Command):
    """``temponas proxies audit CONFIG_OR_PRESET``."""

    help = "rank correlation of every proxy with short training"
    description = ("Sample architectures, run every proxy and short training at "
                   "several budgets and seeds, and write audit.json/.md/.png.")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        add_config_or_preset(p, "an experiment YAML (its backbone, task, space and evaluator "
                                "options) or a backbone preset name (its default space)", optional=False)
        p.add_argument("--n-archs", type=int, default=24)
        p.add_argument("--budgets", default="15,30", help="comma-separated step counts")
        p.add_argument("--seeds", default="2", help="a count S (seeds 0..S-1) or a comma list")
        p.add_argument("--out", required=True, metavar="DIR")
        p.add_argument("--proxies", default=None,
                       help="comma-separated evaluator names (default: params, flops, every "
                            "zero-cost proxy and the supernet)")
        p.add_argument("--options", metavar="FILE.yaml",
                       help="YAML with evaluator options: either one mapping for every torch "
                            "evaluator, or {proxies: {...}, short_train: {...}}")
        p.add_argument("--workers", type=int, default=1, help="processes for short training")
        p.add_argument("--sample-seed", "--choose-sample-seed", type=int, default=0, dest="sample_seed")
        p.add_argument("--report-sample-seed", type=int, default=None, metavar="SEED",
                       help="also audit a held-out sample drawn with SEED (choose on "
                            "--sample-seed, report on SEED)")
        p.add_argument("--bootstrap", type=int, default=1000)

    def take_action(self, args: argparse.Namespace) -> int:
        from evaluators.audit import DEFAULT_PROXIES, AuditSpec, markdown, proxy_options, write_report
        from evaluators.audit import run_audit as _run
        from evaluators.registry import available, create_evaluator

        in_range("--n-archs", args.n_archs, "n_archs")
        in_range("--bootstrap", args.bootstrap, "bootstrap")
        target = resolve_target(args, space_files=False)
        budgets = int_list(args.budgets, "--budgets")
        seeds = _seeds(args.seeds)
        proxies = tuple(p.strip() for p in args.proxies.split(",")) if args.proxies else DEFAULT_PROXIES
        for p in proxies:
            if p not in available() and ":" not in p:
                raise ConfigError(f"--proxies: unknown evaluator {p!r} (available: {', '.join(available())})")
        file_opts = read_options(args.options)
        if file_opts:
            proxy_opts, st_opts = _split_options(file_opts, args.options)
        elif target.evaluator_options:
            proxy_opts, st_opts = _split_options(target.evaluator_options, "evaluator.options")
        else:
            proxy_opts, st_opts = {}, {}
        spec = AuditSpec(backbone=target.backbone, space=target.space, n_archs=args.n_archs,
                         budgets=budgets, seeds=seeds, proxies=proxies, proxy_options=proxy_opts,
                         short_train_options=st_opts, sample_seed=args.sample_seed,
                         bootstrap=args.bootstrap, workers=args.workers)
        # validate options before hours of work
        create_evaluator("short_train", target.backbone, st_opts, where="short_train")
        for p in proxies:
            create_evaluator(p, target.backbone, proxy_options(spec, p), where=p)
        if args.report_sample_seed is not None:  # choose on --sample-seed, report on this one
            from evaluators.audit_heldout import run_heldout_report
            text, paths = run_heldout_report(spec, args.sample_seed, args.report_sample_seed, args.out)
            print(text)
            print(f"wrote {', '.join(paths.values())}", file=sys.stderr)
            return 0
        res = _run(spec, progress=True)
        paths = write_report(res, args.out)
        print(markdown(res))
        print(f"wrote {', '.join(paths.values())}", file=sys.stderr)
        return 0
