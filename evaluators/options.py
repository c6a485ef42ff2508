"""Typed evaluator options: a frozen dataclass per evaluator, parsed from a plain mapping.

``parse_options(OptionsCls, mapping, where)`` rejects unknown keys and wrong types with a
:class:`ConfigError` whose message names the key (``evaluator.options.budget: ...``).
Nested dataclass fields (e.g. ``scale``) are parsed recursively.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from common.limits import RESOURCE_MAX, RESOURCE_MEMORY_MAX, check_range, option_range
from search_space.errors import ConfigError

T = TypeVar("T")

#: Ray resources an evaluation needs unless the options say otherwise.
DEFAULT_RESOURCES: Mapping[str, float] = {"num_cpus": 1.0}


def parse_resources(value: Any, where: str) -> dict[str, float]:
    """``{"num_cpus": 1, "num_gpus": 0.5, "custom": 1}`` -> validated float mapping."""
    if value is None:
        return dict(DEFAULT_RESOURCES)
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping of Ray resource name to amount")
    out: dict[str, float] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not k:
            raise ConfigError(f"{where}: resource names must be non-empty strings, got {k!r}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
            raise ConfigError(f"{where}.{k}: expected a number >= 0, got {v!r}")
        check_range(f"{where}.{k}", float(v),
                    (0.0, RESOURCE_MEMORY_MAX if k == "memory" else RESOURCE_MAX))
        out[k] = float(v)
    return out


def _check(value: Any, typ: Any, where: str) -> Any:
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):  # Optional[X] (X | None)
        inner = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None and len(inner) < len(typing.get_args(typ)):
            return None
        return _check(value, inner[0], where)
    if dataclasses.is_dataclass(typ):
        if isinstance(value, typ):
            return value
        return parse_options(typ, value, where)
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return option_range(where, value)
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return option_range(where, float(value))
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if origin is typing.Literal:
        allowed = typing.get_args(typ)
        if value not in allowed:
            raise ConfigError(f"{where}: expected one of {', '.join(map(str, allowed))}, "
                              f"got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (elem,) = typing.get_args(typ)[:1]
        return tuple(_check(v, elem, f"{where}[{i}]") for i, v in enumerate(value))
    if typ is dict or origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    raise TypeError(f"unsupported option type {typ!r} at {where}")  # programming error


def parse_options(cls: type[T], data: Mapping[str, Any] | None, where: str) -> T:
    """An instance of the options dataclass ``cls`` from ``data`` (missing keys: defaults)."""
    if data is None:
        data = {}
    if dataclasses.is_dataclass(data) and isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            raise ConfigError(f"{where}.{key}: unknown option (known: {', '.join(sorted(known))})")
    kw = {}
    for key, value in data.items():
        if key == "resources":  # null = unset: the evaluator's default resources
            kw[key] = None if value is None else parse_resources(value, f"{where}.resources")
        else:
            kw[key] = _check(value, hints[key], f"{where}.{key}")
    try:
        return cls(**kw)
    except ConfigError as e:  # a range check naming one of cls's fields: name the full key
        msg = str(e)
        if msg.split(":", 1)[0] in known:
            raise ConfigError(f"{where}.{msg}") from None
        raise
    except (TypeError, ValueError) as e:  # __post_init__ range checks
        raise ConfigError(f"{where}: {e}") from None


def options_dict(opts: Any) -> dict[str, Any]:
    """JSON-ready dict of an options dataclass (for config keys and result files)."""
    return dataclasses.asdict(opts)
