"""The shape every ``temponas`` command has (the model is ``optuna/cli.py``'s ``_BaseCommand``).

A command is a class with a one-line ``help``, an optional longer ``description``, the flags it
takes (:meth:`Command.add_arguments`) and what it does (:meth:`Command.take_action`). Its name
is its key in the table of commands (``experiments.cli.COMMANDS``). User errors are raised as
:class:`~common.errors.TemponasError`; ``main`` prints them as one ``error: ...`` line, exit 2.
Heavy imports (torch, coremltools, matplotlib, ray) belong inside ``take_action``.
"""

from __future__ import annotations

import abc
import argparse
from typing import ClassVar


class Command(abc.ABC):
    """One ``temponas`` command (or sub-command of a group such as ``latency``)."""

    help: ClassVar[str]
    description: ClassVar[str | None] = None

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:  # noqa: B027 (optional hook)
        """Add this command's positional arguments and flags to ``parser``."""

    @abc.abstractmethod
    def take_action(self, args: argparse.Namespace) -> int:
        """Run the command with the parsed ``args``; return the exit code (0 = success)."""
