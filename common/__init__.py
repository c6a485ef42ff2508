"""The ground floor of temponas: plumbing every package shares (imports nothing of ours).

- :mod:`common.errors`: the user-facing error types (one line, exit code 2 from the CLI);
- :mod:`common.fsio`: atomic file writes (temp file + fsync + rename), JSON lines, JSON helpers;
- :mod:`common.stats`: rank statistics with bootstrap intervals;
- :mod:`common.hashing`: content hashes of (large) files, computed once per file version;
- :mod:`common.limits`: every resource bound on input (file sizes, nesting, numeric ranges);
- :mod:`common.loaders`: THE bounded YAML and JSON readers.
"""

from common.errors import ConfigError, ExportError, OutputError, TemponasError
from common.fsio import (
    append_jsonl,
    atomic_dir,
    atomic_path,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    file_lock,
    io_error,
    json_safe,
    jsonable,
    read_jsonl,
    release_holder_lock,
    try_holder_lock,
)
from common.hashing import file_sha256, files_sha256
from common.limits import check_range, option_range
from common.loaders import load_json, load_yaml, parse_json, parse_yaml, read_text
from common.stats import bootstrap_ci, correlation, kendall, spearman

__all__ = ["ConfigError", "ExportError", "OutputError", "TemponasError", "append_jsonl",
           "atomic_dir", "atomic_path", "atomic_write", "atomic_write_bytes", "atomic_write_json",
           "atomic_write_text", "bootstrap_ci", "check_range", "correlation", "file_lock", "file_sha256",
           "files_sha256", "io_error", "json_safe", "jsonable",
           "kendall", "load_json", "load_yaml", "option_range", "parse_json", "parse_yaml",
           "read_jsonl", "read_text", "release_holder_lock", "spearman", "try_holder_lock"]
