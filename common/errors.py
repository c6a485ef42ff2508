"""The project's error types: user mistakes that the CLI prints as one line and exits 2 on.

Every package raises these (or subclasses of them); nothing else is caught by the CLI.
"""

from __future__ import annotations


class TemponasError(Exception):
    """A user-facing error. The message names the file/key/row/column at fault.

    The CLI catches it, prints ``error: <message>`` on one line and exits with code 2.
    """


class ConfigError(TemponasError):
    """A configuration, architecture or search-space description is invalid."""


class OutputError(TemponasError):
    """A file or directory cannot be written (disk full, read-only, not a directory)."""


class ExportError(TemponasError):
    """A model cannot be exported (unknown architecture, converter failure)."""
