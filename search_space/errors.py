"""The project's error type: user mistakes that the CLI prints as one line and exits 2 on."""

from __future__ import annotations


class TemponasError(Exception):
    """A user-facing error. The message names the file/key/row/column at fault.

    The CLI catches it, prints ``error: <message>`` on one line and exits with code 2.
    """


class ConfigError(TemponasError):
    """A configuration, architecture or search-space description is invalid."""
