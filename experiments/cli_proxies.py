"""``temponas proxies``: list the quality evaluators, preview the bundled video data, and audit
how well each proxy ranks candidates compared with short training.

``temponas proxies list [--json]``
``temponas proxies preview-data --out FILE.png|FILE.gif [--preset NAME] [--split train|val]
[--n N] [--decoded]``
``temponas proxies audit CONFIG_OR_PRESET --n-archs N --budgets A,B --seeds S --out DIR
[--proxies a,b,...] [--options FILE.yaml] [--workers W] [--sample-seed A --report-sample-seed B]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from search_space.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("proxies", help="quality proxies: list, preview data, fidelity audit",
                              description="Quality evaluators: list them, look at the bundled video "
                                          "data, and audit proxy fidelity against short training.")
    sub = p.add_subparsers(dest="proxies_command", metavar="SUBCOMMAND")
    sub.required = True

    q = sub.add_parser("list", help="registered evaluators")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=run_list)

    q = sub.add_parser("preview-data", help="write a PNG strip or GIF of the bundled videos")
    q.add_argument("--out", required=True, metavar="FILE", help="*.png (strip) or *.gif")
    q.add_argument("--preset", default="snapgen_v", help="backbone preset (sets the text width)")
    q.add_argument("--split", default="train", choices=("train", "val"))
    q.add_argument("--n", type=int, default=8, help="number of videos")
    q.add_argument("--decoded", action="store_true",
                   help="show what the latents encode (decode the fixed encoding)")
    q.add_argument("--options", metavar="FILE.yaml",
                   help="evaluator options (scale/data) as in an experiment config")
    q.set_defaults(func=run_preview)

    q = sub.add_parser("audit", help="rank correlation of every proxy with short training",
                       description="Sample architectures, run every proxy and short training at "
                                   "several budgets and seeds, and write audit.json/.md/.png.")
    q.add_argument("config", metavar="CONFIG_OR_PRESET",
                   help="an experiment YAML (its backbone, task, space and evaluator options) "
                        "or a backbone preset name (its default space)")
    q.add_argument("--n-archs", type=int, default=24)
    q.add_argument("--budgets", default="15,30", help="comma-separated step counts")
    q.add_argument("--seeds", default="2", help="a count S (seeds 0..S-1) or a comma list")
    q.add_argument("--out", required=True, metavar="DIR")
    q.add_argument("--proxies", default=None,
                   help="comma-separated evaluator names (default: params, flops and every "
                        "zero-cost proxy)")
    q.add_argument("--options", metavar="FILE.yaml",
                   help="YAML with evaluator options: either one mapping for every torch "
                        "evaluator, or {proxies: {...}, short_train: {...}}")
    q.add_argument("--workers", type=int, default=1, help="processes for short training")
    q.add_argument("--sample-seed", "--choose-sample-seed", type=int, default=0, dest="sample_seed")
    q.add_argument("--report-sample-seed", type=int, default=None, metavar="SEED",
                   help="also audit a held-out sample drawn with SEED (choose on "
                        "--sample-seed, report on SEED)")
    q.add_argument("--bootstrap", type=int, default=1000)
    q.set_defaults(func=run_audit)


# ---- helpers --------------------------------------------------------------------------------------
def _int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(x) for x in str(text).split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"{flag}: expected comma-separated integers, got {text!r}") from None
    if not vals:
        raise ConfigError(f"{flag}: expected at least one integer")
    return vals


def _seeds(text: str) -> tuple[int, ...]:
    vals = _int_list(text, "--seeds")
    if len(vals) == 1 and "," not in text:
        if vals[0] < 1:
            raise ConfigError(f"--seeds: a count must be >= 1, got {vals[0]}")
        return tuple(range(vals[0]))
    return vals


def _load_options(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    import yaml
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of evaluator options")
    return data


def _split_options(data: dict[str, Any], where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(proxy options, short_train options) from an --options file."""
    if set(data) <= {"proxies", "short_train"} and data:
        for k, v in data.items():
            if not isinstance(v, dict):
                raise ConfigError(f"{where}.{k}: expected a mapping")
        return dict(data.get("proxies") or {}), dict(data.get("short_train") or {})
    shared = {k: v for k, v in data.items() if k in ("scale", "data", "pretrain", "batch",
                                                      "threads", "spatial", "cache_dir")}
    return shared, dict(data)


def _resolve(target: str):
    """(backbone, space, evaluator options from the config) of a preset name or config file."""
    from search_space.presets import default_task, get_backbone, preset_names
    from search_space.space import default_space

    if target in preset_names():
        bb = get_backbone(target)
        return bb, default_space(bb, default_task(target)), {}
    if not os.path.exists(target):
        raise ConfigError(f"{target}: neither a preset ({', '.join(preset_names())}) nor a config file")
    from experiments.config import load_config
    cfg = load_config(target)
    opts = dict(cfg.evaluator.options or {})
    return cfg.backbone_spec, cfg.search_space, opts


# ---- commands -------------------------------------------------------------------------------------
def run_list(args: argparse.Namespace) -> int:
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
        print(json.dumps(rows, indent=1))
        return 0
    for r in rows:
        mark = " (default fast proxy)" if r["default_fast_proxy"] else ""
        print(f"{r['name']:<12} {r['direction']:<9} {'budget' if r['uses_budget'] else 'zero-cost':<9} "
              f"{r['summary']}{mark}")
    return 0


def run_preview(args: argparse.Namespace) -> int:
    from evaluators._torch_setup import Scaled, TorchOptions
    from evaluators.data import load_splits, save_preview
    from evaluators.options import parse_options
    from search_space.presets import default_task, get_backbone

    if args.n < 1:
        raise ConfigError(f"--n: must be >= 1, got {args.n}")
    if not args.out.lower().endswith((".png", ".gif")):
        raise ConfigError(f"--out: {args.out!r} must end in .png or .gif")
    bb = get_backbone(args.preset)
    raw = _load_options(args.options)
    opts = parse_options(TorchOptions, {k: v for k, v in raw.items()
                                        if k in ("scale", "data", "batch", "spatial")}, args.options or "options")
    g = Scaled.of(bb, opts, default_task(args.preset).latent_channels).geometry
    train, val, std = load_splits(g, max(args.n, opts.data.num_train), max(args.n, opts.data.num_val),
                                  opts.data.seed)
    videos = train if args.split == "train" else val
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_preview(videos, args.out, max_videos=args.n, decoded=args.decoded, channel_std=std)
    print(f"wrote {args.out} ({min(args.n, len(videos))} {args.split} videos of "
          f"{g.num_frames} frames: {', '.join(sorted(set(videos.sources[:args.n])))})")
    return 0


def run_audit(args: argparse.Namespace) -> int:
    from evaluators.audit import DEFAULT_PROXIES, AuditSpec, markdown, proxy_options, write_report
    from evaluators.audit import run_audit as _run
    from evaluators.registry import available

    backbone, space, cfg_opts = _resolve(args.config)
    budgets = _int_list(args.budgets, "--budgets")
    seeds = _seeds(args.seeds)
    proxies = tuple(p.strip() for p in args.proxies.split(",")) if args.proxies else DEFAULT_PROXIES
    for p in proxies:
        if p not in available() and ":" not in p:
            raise ConfigError(f"--proxies: unknown evaluator {p!r} (available: {', '.join(available())})")
    file_opts = _load_options(args.options)
    if file_opts:
        proxy_opts, st_opts = _split_options(file_opts, args.options)
    else:
        proxy_opts, st_opts = _split_options(cfg_opts, "evaluator.options") if cfg_opts else ({}, {})
    spec = AuditSpec(backbone=backbone, space=space, n_archs=args.n_archs, budgets=budgets,
                     seeds=seeds, proxies=proxies, proxy_options=proxy_opts,
                     short_train_options=st_opts, sample_seed=args.sample_seed,
                     bootstrap=args.bootstrap, workers=args.workers)
    # validate options before hours of work
    from evaluators.registry import create_evaluator
    create_evaluator("short_train", backbone, st_opts, where="short_train")
    for p in proxies:
        create_evaluator(p, backbone, proxy_options(spec, p), where=p)
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
