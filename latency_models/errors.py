"""Errors of the latency package: each message names the file and the line, key or column."""

from common.errors import TemponasError


class ModelFileError(TemponasError):
    """A saved latency model / device profile cannot be read, or a predictor name is unknown."""


class MeasurementError(TemponasError):
    """A measurement file is malformed (the message names file, line and column)."""


__all__ = ["MeasurementError", "ModelFileError"]
