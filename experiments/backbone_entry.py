"""The ``backbone:`` entry of an experiment config: a preset name, an inline
:class:`~search_space.backbone.BackboneSpec` mapping, or a diffusers UNet folder
``{diffusers: DIR_OR_CONFIG_JSON, weights: true|false, name: NAME}`` (its ``config.json`` becomes
the backbone, its safetensors the spatial weights; ``weights`` defaults to whether the folder
has any). Paths are made absolute when the config is read, so the run's saved config rebuilds
the same backbone from any working directory.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from typing import Any

from common.errors import ConfigError
from search_space.backbone import BackboneSpec
from search_space.diffusers_config import DiffusersUNet, read_diffusers_unet, weight_files_at
from search_space.presets import preset_names

__all__ = ["DIFFUSERS_KEY", "option_field", "parse_backbone", "read_unet"]

DIFFUSERS_KEY = "diffusers"
_DIFFUSERS_KEYS = (DIFFUSERS_KEY, "weights", "name")


@functools.lru_cache(maxsize=16)
def _read_unet_cached(path: str, name: str | None, stamp: tuple[int, int]) -> DiffusersUNet:
    return read_diffusers_unet(path, name)


def read_unet(path: str, name: str | None) -> DiffusersUNet:
    """:func:`read_diffusers_unet`, read again only when the config file changes."""
    from search_space.diffusers_config import config_file

    try:
        st = config_file(path).stat()
        stamp = (st.st_size, st.st_mtime_ns)
    except OSError:
        stamp = (0, 0)
    return _read_unet_cached(path, name, stamp)


def option_field(evaluator: str, name: str) -> bool:
    """True if the evaluator's options dataclass has a field ``name``."""
    from evaluators.registry import resolve

    try:
        opts = getattr(resolve(evaluator), "Options", None)
    except ConfigError:
        return False
    return is_dataclass(opts) and any(f.name == name for f in fields(opts))


def _parse_diffusers(value: Mapping[str, Any], where: str) -> Any:
    """``{diffusers: DIR_OR_CONFIG_JSON, weights: bool, name: str}`` -> the same with an
    absolute path and ``weights`` resolved (default: true when the folder has weights)."""
    for k in value:
        if k not in _DIFFUSERS_KEYS:
            raise ConfigError(f"{where}.{k}: unknown key (known: {', '.join(_DIFFUSERS_KEYS)})")
    path, name, weights = value[DIFFUSERS_KEY], value.get("name"), value.get("weights")
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{where}.{DIFFUSERS_KEY}: expected the path of a diffusers UNet folder "
                          f"or its config.json, got {path!r}")
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"{where}.name: expected a string, got {name!r}")
    if weights is not None and not isinstance(weights, bool):
        raise ConfigError(f"{where}.weights: expected true/false, got {weights!r}")
    path = os.path.abspath(os.path.expanduser(path))
    unet = read_diffusers_unet(path, name)  # errors name the file
    if weights and not unet.weights:
        weight_files_at(unet.config_path.parent, where=f"{where}.weights")  # names the folder
    out = {DIFFUSERS_KEY: path, "weights": bool(unet.weights) if weights is None else weights}
    if name is not None:
        out["name"] = name
    return out


def parse_backbone(value: Any, where: str) -> Any:
    """The validated ``backbone:`` value (a diffusers entry with its path made absolute)."""
    if isinstance(value, str):
        if value not in preset_names():
            raise ConfigError(f"{where}: unknown preset {value!r} (presets: {', '.join(preset_names())})")
        return value
    if isinstance(value, Mapping) and DIFFUSERS_KEY in value:
        return _parse_diffusers(value, where)
    if isinstance(value, Mapping):
        BackboneSpec.from_dict(value, where)  # validate now
        return value
    raise ConfigError(f"{where}: expected a preset name, a backbone mapping or "
                      f"{{diffusers: DIR}}, got {value!r}")
