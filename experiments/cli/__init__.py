"""The ``temponas`` command line. Each command group lives in its own module and registers
its sub-parser here; user errors (:class:`TemponasError`) print one line and exit 2."""

from __future__ import annotations

import argparse
import importlib
import sys

from search_space.errors import TemponasError

# module, attribute that adds sub-commands: register(subparsers) -> None
_COMMAND_MODULES = (
    "experiments.cli._space",    # temponas space
    "experiments.cli._latency",  # temponas latency ...
    "experiments.cli._proxies",  # temponas proxies ...
    "experiments.cli._search",   # temponas search / pareto / plot / export
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="temponas",
        description="Hardware-aware search of temporal layers for mobile video diffusion UNets.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # that command group is not built yet
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except TemponasError as e:
        msg = " ".join(str(e).split("\n"))  # always one line
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `temponas ... | head`: the reader left; not an error of ours
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    return int(rc or 0)
