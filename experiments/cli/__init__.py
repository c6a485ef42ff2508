"""The ``temponas`` command line: one table of commands, each a :class:`Command` (``_base``).

A command's name is its key in :data:`COMMANDS`; a two-word name (``"latency fit"``) is a
sub-command of the group named by its first word (:data:`GROUPS`). Shared flags and the
reading of CONFIG_OR_PRESET live in ``_args``. User errors (:class:`TemponasError`) print one
line, ``error: ...``, and exit 2; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import os
import sys

from experiments.cli import _latency, _proxies
from experiments.cli._base import Command
from experiments.cli._latency import LatencyDevices, LatencyFit, LatencyPredict, LatencyProbes, LatencyReport
from experiments.cli._latency_measure import LatencyExportProbes, LatencyMeasure
from experiments.cli._latency_priors import LatencyBuildPriors, LatencyFitset
from experiments.cli._proxies import ProxiesAudit, ProxiesList, ProxiesPreviewData
from experiments.cli._search import Export, Pareto, Plot, Search
from experiments.cli._space import Space
from experiments.storage_url import mask_text
from search_space.errors import TemponasError

__all__ = ["COMMANDS", "GROUPS", "Command", "build_parser", "main"]

#: command groups: name -> (help, description)
GROUPS: dict[str, tuple[str, str | None]] = {
    "latency": (_latency.GROUP_HELP, None),
    "proxies": (_proxies.GROUP_HELP, _proxies.GROUP_DESCRIPTION),
}

#: every command, in the order ``temponas --help`` lists them
COMMANDS: dict[str, type[Command]] = {
    "space": Space,
    "latency predict": LatencyPredict,
    "latency devices": LatencyDevices,
    "latency probes": LatencyProbes,
    "latency measure": LatencyMeasure,
    "latency fit": LatencyFit,
    "latency report": LatencyReport,
    "latency export-probes": LatencyExportProbes,
    "latency fitset": LatencyFitset,
    "latency build-priors": LatencyBuildPriors,
    "proxies list": ProxiesList,
    "proxies preview-data": ProxiesPreviewData,
    "proxies audit": ProxiesAudit,
    "search": Search,
    "pareto": Pareto,
    "plot": Plot,
    "export": Export,
}


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of :data:`COMMANDS`; each leaf parser's ``handler`` runs its command."""
    parser = argparse.ArgumentParser(
        prog="temponas",
        description="Hardware-aware search of temporal layers for mobile video diffusion UNets.")
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, command_type in COMMANDS.items():
        *group, leaf = name.split()
        sub = top
        if group:
            (g,) = group
            if g not in groups:
                help_, description = GROUPS[g]
                gp = top.add_parser(g, help=help_, description=description)
                groups[g] = gp.add_subparsers(dest=f"{g}_command", metavar="SUBCOMMAND", required=True)
            sub = groups[g]
        command = command_type()
        p = sub.add_parser(leaf, help=command.help, description=command.description)
        command.add_arguments(p)
        p.set_defaults(handler=command.take_action)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``temponas ARGV``: the exit code (0, 2 for a user error, 130 when interrupted)."""
    args = build_parser().parse_args(argv)
    try:
        rc = args.handler(args)
    except TemponasError as e:
        msg = mask_text(" ".join(str(e).split("\n")))  # always one line, no storage password
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `temponas ... | head`: the reader left; not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    return int(rc or 0)
