"""``temponas latency measure | export-probes``: time a space's probe set with torch on this CPU,
or convert it to Core ML packages for a Mac or an iPhone."""

from __future__ import annotations

import argparse
from pathlib import Path

from experiments.cli._args import (
    CONFIG_OR_PRESET_HELP,
    add_calibration_arg,
    add_config_or_preset,
    add_task_args,
    at_least,
    in_range,
    resolve_target,
)
from experiments.cli._base import Command
from experiments.cli._latency import probe_items
from search_space.errors import ConfigError


class LatencyMeasure(Command):
    """``temponas latency measure [CONFIG_OR_PRESET] --out CSV``."""

    help = "time the probe set (and random whole networks) with torch on this CPU"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        add_config_or_preset(p, CONFIG_OR_PRESET_HELP)
        add_task_args(p)
        p.add_argument("--out", required=True, help="measurement CSV to write")
        p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (pinned)")
        p.add_argument("--repeats", type=int, default=1, help="interleaved repeats (noise floor)")
        p.add_argument("--networks", type=int, default=0, help="also time N random whole architectures")
        p.add_argument("--networks-only", action="store_true")
        p.add_argument("--temporal-only", action="store_true")
        add_calibration_arg(p)
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

    def take_action(self, args: argparse.Namespace) -> int:
        from latency_models.backends.torch_cpu import TimingPolicy, TorchCpuBackend, measure
        from latency_models.measurements import Measurements
        from latency_models.probes import random_archs

        space = resolve_target(args).space
        at_least("--threads", args.threads)
        in_range("--threads", args.threads, "threads")
        at_least("--repeats", args.repeats)
        for flag, value, key in (("--repeats", args.repeats, "repeats"),
                                 ("--networks", args.networks, "networks"),
                                 ("--warmup", args.warmup, "warmup"),
                                 ("--min-runs", args.min_runs, "runs"),
                                 ("--max-runs", args.max_runs, "runs"),
                                 ("--time-limit", args.time_limit, "time_limit_s")):
            in_range(flag, value, key)
        k = args.calibration_repeats
        if k is not None and not 1 <= k <= args.repeats:
            raise ConfigError(f"--calibration-repeats: must be between 1 and --repeats "
                              f"({args.repeats}), got {k}")
        items, cal = ([], []) if args.networks_only else probe_items(args, space)
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


class LatencyExportProbes(Command):
    """``temponas latency export-probes [CONFIG_OR_PRESET] --out DIR``."""

    help = "write a Core ML probe bundle (+ macOS runner script)"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        add_config_or_preset(p, CONFIG_OR_PRESET_HELP)
        add_task_args(p)
        p.add_argument("--out", required=True, help="bundle directory")
        p.add_argument("--target", default="iOS18", choices=["iOS17", "iOS18"],
                       help="minimum deployment target (iOS18 has a native SDPA op)")
        p.add_argument("--networks", type=int, default=0,
                       help="also export N random whole networks (composition correction)")
        p.add_argument("--temporal-only", action="store_true")
        add_calibration_arg(p)
        p.add_argument("--limit", type=int, default=0, help="only the first N probes")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--force", action="store_true")
        p.add_argument("--no-progress", action="store_true")

    def take_action(self, args: argparse.Namespace) -> int:
        from latency_models.backends.coreml_export import export_bundle
        from latency_models.probes import random_archs

        space = resolve_target(args).space
        items, cal = probe_items(args, space)
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
