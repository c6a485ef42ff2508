"""The project's error types, re-exported from the ground floor (:mod:`common.errors`)."""

from common.errors import ConfigError, TemponasError

__all__ = ["ConfigError", "TemponasError"]
