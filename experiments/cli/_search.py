"""``temponas search | pareto | plot | export``: run a search, and look at or export its run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiments.cli._args import at_least, in_range
from experiments.cli._base import Command


class Search(Command):
    """``temponas search CONFIG``."""

    help = "run (or resume) a multi-objective architecture search"
    description = ("Run the Optuna study described by CONFIG; evaluations run as "
                   "Ray tasks. Outputs go to OUT (default <config out>/<name>).")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("config", help="experiment YAML (see experiments/configs/)")
        p.add_argument("--n-trials", type=int, help="total trials the study should have finished")
        p.add_argument("--workers", type=int, help="evaluations in flight at once")
        p.add_argument("--ray-address", help="join an existing Ray cluster (default: start a local one)")
        p.add_argument("--out", help="run directory (default: <out>/<name> from the config)")
        p.add_argument("--resume", action="store_true",
                       help="continue the study in the run directory where it stopped")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")

    def take_action(self, args: argparse.Namespace) -> int:
        from experiments.config import load_config
        from experiments.runner import SearchOptions, run_search

        at_least("--n-trials", args.n_trials)
        at_least("--workers", args.workers)
        in_range("--n-trials", args.n_trials, "n_trials")
        cfg = load_config(args.config)
        s = run_search(cfg, SearchOptions(n_trials=args.n_trials, workers=args.workers,
                                          ray_address=args.ray_address, out=args.out,
                                          resume=args.resume, progress=not args.no_progress))
        pruned = f"{s.pruned} pruned on a lower rung, " if s.pruned else ""
        msg = (f"{s.run_dir}: {s.complete} complete, {s.over_memory} over the memory budget "
               f"(not evaluated), {pruned}{s.failed} failed this session; {s.evaluations_run} "
               f"evaluations run, {s.cache_hits} served from the cache, {s.duplicates} repeated "
               f"proposals told their first outcome (not counted); Pareto front: "
               f"{s.front_size} architectures; {s.wall_time_s:.1f} s")
        print(msg)
        if s.exhausted_after:
            print(f"stopped early: the sampler proposed only evaluated architectures "
                  f"{s.exhausted_after} times in a row (the space holds "
                  f"{cfg.search_space.size():,}); the study has fewer trials than --n-trials")
        if s.recovered:
            print(f"recovered {len(s.recovered)} trial(s) an earlier driver left running: "
                  f"{', '.join(map(str, s.recovered))} (re-queued)")
        for note in getattr(s, "repairs", []):
            print(f"repaired {note}")
        if s.interrupted:
            print(f"interrupted; everything finished so far is saved. Continue with:\n"
                  f"  {resume_command(args, s)}", file=sys.stderr)
            return 130
        print(f"report: {s.run_dir / 'report.md'}")
        return 0


def resume_command(args: argparse.Namespace, s: object) -> str:
    """The command that continues this search: the same config, run directory and target,
    and every other flag given (a target left out would fall back to the config's)."""
    import shlex

    argv = ["temponas", "search", args.config, "--out", str(s.run_dir), "--resume",
            "--n-trials", str(args.n_trials or s.n_trials)]
    if args.workers is not None:
        argv += ["--workers", str(args.workers)]
    if args.ray_address:
        argv += ["--ray-address", args.ray_address]
    if args.no_progress:
        argv.append("--no-progress")
    return shlex.join(argv)


class Pareto(Command):
    """``temponas pareto RUN``."""

    help = "print (and rewrite) the Pareto front of a run"
    description = ("Print the feasible Pareto front of a run and rewrite its trials.csv, "
                   "pareto.csv and archs/ from the study. A run that cannot be written "
                   "(read-only, disk full) is still printed, with a note on stderr.")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("run", help="run directory")

    def take_action(self, args: argparse.Namespace) -> int:
        from common.errors import OutputError
        from experiments.outputs import write_outputs
        from experiments.rundir import open_run
        from experiments.trials import pareto_front, stage_summary, trial_attrs

        run = open_run(args.run)
        saved = f"written to {run.run_dir / 'pareto.csv'}"
        try:
            write_outputs(run.run_dir, study=run.study, cfg=run.cfg, plots=False, report=False)
        except (OutputError, OSError) as e:  # the front is still worth printing
            print(f"note: {e}; the front below is not saved", file=sys.stderr)
            saved = "not saved (the run directory cannot be written)"
        objs = list(run.study.user_attrs.get("objectives", run.cfg.objectives))
        front = pareto_front(run.study)
        print(f"{'trial':>5}  {'arch_id':12}  " + "  ".join(f"{o:>12}" for o in objs)
              + "  temporal layers")
        for t in front:
            print(f"{t.number:>5}  {t.user_attrs.get('arch_id', ''):12}  "
                  + "  ".join(f"{v:>12.5g}" for v in t.values)
                  + f"  {stage_summary(trial_attrs(t).get('arch'))}")
        print(f"{len(front)} architecture(s) on the feasible front (the earliest trial of each); "
              f"{saved}")
        return 0


class Plot(Command):
    """``temponas plot RUN``."""

    help = "redraw a run's plots and report.md"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("run", help="run directory")

    def take_action(self, args: argparse.Namespace) -> int:
        from experiments.outputs import write_outputs
        from experiments.rundir import open_run

        run = open_run(args.run)
        model = None
        try:
            import latency_models

            model = latency_models.load_latency_model(run.cfg.latency_model)
        except Exception:  # plots without the parity panel are still useful
            model = None
        write_outputs(run.run_dir, study=run.study, cfg=run.cfg, latency_model=model)
        for p in sorted((run.run_dir / "plots").glob("*.png")):
            print(p)
        print(run.run_dir / "report.md")
        return 0


class Export(Command):
    """``temponas export RUN --arch-id ID --format json|torch|coreml --out DIR [--seed S]``."""

    help = "export one architecture of a run (JSON, PyTorch, Core ML)"
    description = ("Export one architecture of a run. torch/coreml hold the backbone's weights "
                   "(when the run has them) and the temporal weights short_train trained "
                   "(when the run kept them: evaluator.keep_weights); coreml is converted at "
                   "the precision the run's latency model priced (e.g. 6-bit palettized).")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("run", help="run directory")
        p.add_argument("--arch-id", required=True, help="arch_id (see pareto.csv)")
        p.add_argument("--format", choices=("json", "torch", "coreml"), default="json")
        p.add_argument("--out", required=True, help="output directory")
        p.add_argument("--seed", type=int, default=None,
                       help="whose kept weights (default: the first of the run's seeds with some)")
        p.add_argument("--palettize-mode", choices=("kmeans", "uniform"), default="kmeans",
                       help="look-up tables of palettized Core ML weights (kmeans: Apple's "
                            "recipe; uniform: much faster to convert)")

    def take_action(self, args: argparse.Namespace) -> int:
        from experiments.export import export_arch

        paths = export_arch(Path(args.run), args.arch_id, args.format, Path(args.out),
                            seed=args.seed, palettize_mode=args.palettize_mode)
        for p in paths:
            print(p)
        return 0
