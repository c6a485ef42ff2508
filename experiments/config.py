"""Experiment configuration: YAML -> nested frozen dataclasses.

Every key is checked: unknown keys, wrong types and out-of-range values raise
:class:`ConfigError` naming the file and the dotted key path (``smoke.yaml: search.workers:
must be >= 1, got 0``). :func:`load_config` also resolves the backbone, task and search space so
that their errors surface before a search starts.

A config looks like (every key but ``name`` and ``backbone`` has a default)::

    name: smoke
    backbone: tiny                 # a preset name, an inline BackboneSpec mapping, or
                                   # {diffusers: DIR_OR_CONFIG_JSON, weights: true, name: NAME}
    backbone_weights: null         # safetensors file / diffusers folder for the backbone
    task: {num_frames: 4}          # overrides of the preset's default VideoTask
    space: {defaults: {kinds: [none, conv1d, attn1d]}}   # SearchSpace.from_dict restrictions
    latency_model: iphone16pm      # device profile name or a directory written by model.save()
    evaluator: {name: params, options: {}, budget: 0, seeds: [0], timeout_s: 600, retries: 1}
    objectives: [quality, latency_ms]
    constraints: {latency_budget_ms: 120, memory_budget_mb: 2048}
    search: {sampler: nsga2, sampler_options: {population_size: 24}, n_trials: 100,
             workers: 2, seed: 0, storage: null,
             pruner: {name: none, min_budget: 4, reduction_factor: 3, latency_buckets: 3}}
    runtime_env: {working_dir: null, py_modules: [], excludes: [], env_vars: {},
                  ship_project: true, ship_plugins: true}   # what Ray workers get
    out: runs                      # the run goes to <out>/<name>/
"""

from __future__ import annotations

import collections.abc
import math
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from common.errors import ConfigError
from common.limits import option_range
from common.loaders import load_yaml
from experiments.backbone_entry import DIFFUSERS_KEY, option_field, parse_backbone, read_unet
from experiments.ladder import check_pruner
from search_space.backbone import BackboneSpec
from search_space.diffusers_config import DiffusersUNet, weight_files_at
from search_space.presets import default_task, get_backbone, preset_names
from search_space.space import SearchSpace
from search_space.task import VideoTask

SAMPLERS = ("nsga2", "tpe", "random", "gp", "exhaustive")
PRUNERS = ("none", "successive_halving", "hyperband")
OBJECTIVES = ("quality", "latency_ms", "memory_mb")
CONFIG_VERSION = 1


def _meta(**kw: Any) -> dict[str, Any]:
    return kw


@dataclass(frozen=True)
class EvaluatorConfig:
    """Which quality proxy scores a candidate, and how.

    ``options`` go to ``create_evaluator`` unchanged (e.g. ``scale``); ``seeds``: every
    candidate is evaluated once per seed and scored by the mean; ``timeout_s``: one evaluation
    taking longer is cancelled and its trial FAILs; ``retries``: Ray re-runs an evaluation whose
    worker process died up to this many times; ``threads``: torch threads per evaluation;
    ``keep_weights``: save the weights each evaluation trained in the run folder
    (``<run>/weights/<arch_id>/s<seed>.safetensors``; evaluators whose options have
    ``keep_weights``, e.g. ``short_train``), for ``temponas export --format torch``.
    """

    name: str = "params"
    options: Mapping[str, Any] = field(default_factory=dict)
    budget: int = field(default=0, metadata=_meta(min=0))
    seeds: tuple[int, ...] = field(default=(0,), metadata=_meta(nonempty=True))
    timeout_s: float = field(default=600.0, metadata=_meta(min=0.001))
    retries: int = field(default=1, metadata=_meta(min=0))
    threads: int = field(default=1, metadata=_meta(min=1))
    keep_weights: bool = False


@dataclass(frozen=True)
class ConstraintsConfig:
    """Budgets a feasible candidate must meet (``null`` = unconstrained).

    Over the memory budget a candidate is never evaluated (trial PRUNED, reason recorded);
    over the latency budget it is evaluated but infeasible (it cannot enter the front).
    """

    latency_budget_ms: float | None = field(default=None, metadata=_meta(min=0.0))
    memory_budget_mb: float | None = field(default=None, metadata=_meta(min=0.0))


@dataclass(frozen=True)
class PrunerConfig:
    """Multi-fidelity evaluation: a budget ladder (rungs ``min_budget * reduction_factor**k`` up
    to ``evaluator.budget``) as successive halving or Hyperband per latency bucket; lower rungs
    scored on ``rung_val_fraction`` of the held-out data (:mod:`experiments.ladder`)."""

    name: str = field(default="none", metadata=_meta(choices=PRUNERS))
    min_budget: int = field(default=4, metadata=_meta(min=1))
    reduction_factor: int = field(default=3, metadata=_meta(min=2))
    latency_buckets: int = field(default=3, metadata=_meta(min=1))
    rung_val_fraction: float = field(default=1.0, metadata=_meta(min=0.0))
    bootstrap_count: int = field(default=0, metadata=_meta(min=0))


@dataclass(frozen=True)
class SearchConfig:
    """The Optuna study: sampler (default TPE), trial count (distinct architectures, see
    :mod:`experiments.ledger`), parallelism, storage, pruner."""

    sampler: str = field(default="tpe", metadata=_meta(choices=SAMPLERS))
    sampler_options: Mapping[str, Any] = field(default_factory=dict)
    n_trials: int = field(default=100, metadata=_meta(min=1))
    workers: int = field(default=2, metadata=_meta(min=1))
    seed: int = field(default=0, metadata=_meta(min=0))
    storage: str | None = None
    pruner: PrunerConfig = field(default_factory=PrunerConfig)


@dataclass(frozen=True)
class RuntimeEnvConfig:
    """What the search ships to its Ray workers (docs/clusters.md); never changes results.

    ``working_dir``: a directory shipped as the evaluations' working directory (relative data
    paths in the evaluator options resolve there); ``py_modules``: more local packages,
    ``.py`` or ``.whl`` files; ``excludes``: gitignore-style patterns left out of what is
    shipped; ``env_vars``: environment variables of every evaluation (e.g. ``TEMPONAS_CACHE``);
    ``ship_project``: temponas's own packages go along when joining a cluster;
    ``ship_plugins``: so does the module of a ``module:Class`` evaluator (on a local Ray:
    its directory joins the workers' PYTHONPATH if they cannot import it). Paths are relative
    to the working directory of the search.
    """

    working_dir: str | None = None
    py_modules: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    env_vars: Mapping[str, Any] = field(default_factory=dict)
    ship_project: bool = True
    ship_plugins: bool = True


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = field(metadata=_meta(pattern="name"))
    backbone: Any = field(metadata=_meta(custom=True))  # preset name, inline or diffusers mapping
    backbone_weights: str | None = None
    task: Mapping[str, Any] = field(default_factory=dict)
    space: Mapping[str, Any] = field(default_factory=dict)
    latency_model: str = "iphone16pm"
    evaluator: EvaluatorConfig = field(default_factory=EvaluatorConfig)
    objectives: tuple[str, ...] = field(default=("quality", "latency_ms"),
                                        metadata=_meta(nonempty=True, each_choices=OBJECTIVES))
    constraints: ConstraintsConfig = field(default_factory=ConstraintsConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    runtime_env: RuntimeEnvConfig = field(default_factory=RuntimeEnvConfig)
    out: str = "runs"
    config_version: int = CONFIG_VERSION
    source: str = field(default="", compare=False, metadata=_meta(internal=True))

    # ---- resolved objects -------------------------------------------------------------------
    @property
    def diffusers_unet(self) -> DiffusersUNet | None:
        """The diffusers UNet folder the backbone comes from (None for presets/inline)."""
        if isinstance(self.backbone, Mapping) and DIFFUSERS_KEY in self.backbone:
            return read_unet(self.backbone[DIFFUSERS_KEY], self.backbone.get("name"))
        return None

    @property
    def backbone_spec(self) -> BackboneSpec:
        if isinstance(self.backbone, str):
            return get_backbone(self.backbone)
        unet = self.diffusers_unet
        if unet is not None:
            return unet.backbone
        return BackboneSpec.from_dict(_thaw(self.backbone), "backbone")

    @property
    def weights_path(self) -> str | None:
        """The backbone's weights (a safetensors file or a diffusers folder), if it has any."""
        if self.backbone_weights:
            return self.backbone_weights
        if self.diffusers_unet is not None and self.backbone.get("weights"):
            return str(self.diffusers_unet.config_path.parent)
        return None

    @property
    def video_task(self) -> VideoTask:
        bb = self.backbone_spec
        unet = self.diffusers_unet
        if isinstance(self.backbone, str) and self.backbone in preset_names():
            base = default_task(self.backbone)
        elif unet is not None:
            base = unet.default_task()
        else:
            base = VideoTask(text_dim=bb.cross_attention_dim,
                             latent_channels=bb.latent_channels or VideoTask.latent_channels)
        return VideoTask.from_dict({**base.to_dict(), **_thaw(self.task)}, "task")

    def evaluator_options(self) -> dict[str, Any]:
        """``evaluator.options`` as the evaluator gets them: when the backbone comes with
        weights and the evaluator's options have a ``weights`` field (every built-in torch
        evaluator), ``weights`` is the backbone's and ``spatial`` defaults to ``backbone``;
        ``evaluator.keep_weights`` sets the option ``keep_weights``."""
        opts = _thaw(self.evaluator.options)
        path = self.weights_path
        if path is not None and option_field(self.evaluator.name, "weights"):
            opts.setdefault("weights", path)
            opts.setdefault("spatial", "backbone")
        if self.evaluator.keep_weights:
            if not option_field(self.evaluator.name, "keep_weights"):
                raise ConfigError(f"evaluator.keep_weights: evaluator {self.evaluator.name!r} "
                                  f"trains no weights to keep (short_train does)")
            opts["keep_weights"] = True
        return opts

    @property
    def search_space(self) -> SearchSpace:
        return SearchSpace.from_dict(self.backbone_spec, self.video_task, _thaw(self.space), "space")

    def run_dir(self) -> Path:
        """``<out>/<name>``: where a search of this config goes unless ``--out`` says otherwise."""
        return Path(self.out) / self.name

    def to_dict(self) -> dict[str, Any]:
        d = _to_plain(self)
        d.pop("source", None)
        if d.get("backbone_weights") is None:
            d.pop("backbone_weights", None)
        return d

    def identity(self) -> dict[str, Any]:
        """What makes two runs comparable: everything but trial count, parallelism and paths.

        A ``--resume`` is refused when this differs from the run's stored config."""
        d = self.to_dict()
        d["task"] = self.video_task.to_dict()
        for k in ("out", "name", "runtime_env"):
            d.pop(k, None)
        for k in ("n_trials", "workers", "storage"):
            d["search"].pop(k, None)
        for k in ("timeout_s", "retries", "threads", "keep_weights"):
            d["evaluator"].pop(k, None)
        return d

    def with_overrides(self, **search: Any) -> ExperimentConfig:
        """A copy with ``search`` fields (n_trials, workers, ...) and ``out`` replaced."""
        from dataclasses import replace

        out = search.pop("out", None)
        s = replace(self.search, **{k: v for k, v in search.items() if v is not None})
        return replace(self, search=s, out=out or self.out)


# ---- parsing -------------------------------------------------------------------------------

def _thaw(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {k: _thaw(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_thaw(v) for v in x]
    return x


def _freeze(x: Any) -> Any:
    if isinstance(x, Mapping):
        return types.MappingProxyType({k: _freeze(v) for k, v in x.items()})
    if isinstance(x, list):
        return tuple(_freeze(v) for v in x)
    return x


def _to_plain(obj: Any) -> Any:
    if is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in fields(obj)}
    return _thaw(obj)


def _check_scalar(value: Any, t: Any, where: str) -> Any:
    if t is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if t is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if t is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if t is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise AssertionError(t)


def _parse(t: Any, value: Any, where: str, meta: Mapping[str, Any]) -> Any:
    origin = typing.get_origin(t)
    args = typing.get_args(t)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if value is None and type(None) in args:
            return None
        return _parse(inner[0], value, where, meta)
    if is_dataclass(t):
        return _parse_dataclass(t, value, where)
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if meta.get("nonempty") and not value:
            raise ConfigError(f"{where}: must list at least one value")
        items = tuple(_check_scalar(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if args[0] in (int, float):
            for i, v in enumerate(items):
                option_range(f"{where}[{i}]", v)
        if "each_choices" in meta:
            for i, v in enumerate(items):
                if v not in meta["each_choices"]:
                    raise ConfigError(f"{where}[{i}]: {v!r} is not one of "
                                      f"{', '.join(meta['each_choices'])}")
        if len(set(items)) != len(items):
            raise ConfigError(f"{where}: duplicate values {list(items)}")
        return items
    if origin in (Mapping, dict, collections.abc.Mapping) or t is Mapping:
        if value is None:
            return _freeze({})
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        for k in value:
            if not isinstance(k, str):
                raise ConfigError(f"{where}: keys must be strings, got {k!r}")
        return _freeze(value)
    v = _check_scalar(value, t, where)
    if "min" in meta and v < meta["min"]:
        raise ConfigError(f"{where}: must be >= {meta['min']}, got {v}")
    if t in (int, float):
        option_range(where, v)  # the sane range common.limits declares for this key
    if "choices" in meta and v not in meta["choices"]:
        raise ConfigError(f"{where}: {v!r} is not one of {', '.join(meta['choices'])}")
    if meta.get("pattern") == "name":
        if not v or not all(c.isalnum() or c in "-_." for c in v) or v.startswith("."):
            raise ConfigError(f"{where}: {v!r} must be a non-empty name of letters, digits, '-', "
                              f"'_' or '.' (it names the run directory)")
    return v


# keys that once existed and now live elsewhere: named in the error instead of "unknown key"
_MOVED = {"evaluator.num_cpus": "evaluator.options.resources.num_cpus (Ray CPUs per evaluation)"}


def _parse_dataclass(cls: type, data: Any, where: str) -> Any:
    prefix = f"{where}." if where else ""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    public = [f for f in fields(cls) if not f.metadata.get("internal")]
    known = {f.name for f in public}
    for k in data:
        if f"{prefix}{k}" in _MOVED:
            raise ConfigError(f"{prefix}{k}: no longer read; use {_MOVED[f'{prefix}{k}']}")
        if k not in known:
            raise ConfigError(f"{prefix}{k}: unknown key (known: {', '.join(sorted(known))})")
    kw: dict[str, Any] = {}
    for f in public:
        key = f"{prefix}{f.name}"
        if f.name not in data:
            if f.default is MISSING and f.default_factory is MISSING:
                raise ConfigError(f"{key}: missing (required)")
            continue
        if f.metadata.get("custom"):
            kw[f.name] = _freeze(parse_backbone(data[f.name], key))
        else:
            kw[f.name] = _parse(hints[f.name], data[f.name], key, f.metadata)
    return cls(**kw)


def _resolve_weights(cfg: ExperimentConfig) -> ExperimentConfig:
    """``backbone_weights`` as an absolute path whose files exist; not with a diffusers backbone
    that brings its own."""
    from dataclasses import replace

    if cfg.backbone_weights is None:
        return cfg
    unet = cfg.diffusers_unet
    if unet is not None and cfg.backbone.get("weights"):
        raise ConfigError("backbone_weights: the diffusers backbone brings its own weights "
                          "(set backbone.weights: false to use these instead)")
    path = os.path.abspath(os.path.expanduser(cfg.backbone_weights))
    weight_files_at(path, where="backbone_weights")
    return replace(cfg, backbone_weights=path)


def parse_config(data: Any, source: str = "<config>") -> ExperimentConfig:
    """Validate a parsed YAML document; errors are ``ConfigError("<source>: key.path: ...")``."""
    try:
        cfg = _resolve_weights(_parse_dataclass(ExperimentConfig, data, ""))
        if cfg.config_version != CONFIG_VERSION:
            raise ConfigError(f"config_version: {cfg.config_version} is not supported "
                              f"(this temponas reads version {CONFIG_VERSION})")
        for k, v in cfg.runtime_env.env_vars.items():
            if isinstance(v, bool) or not isinstance(v, (str, int, float)):
                raise ConfigError(f"runtime_env.env_vars.{k}: expected a string, got {v!r}")
        if "quality" not in cfg.objectives:
            raise ConfigError("objectives: must include 'quality'")
        if len(cfg.objectives) < 2:
            raise ConfigError("objectives: need at least two (e.g. [quality, latency_ms])")
        space = cfg.search_space  # resolves backbone, task and space restrictions
        check_pruner(cfg)
        if cfg.search.sampler == "exhaustive" and space.size() > 1_000_000:
            raise ConfigError(f"search.sampler: exhaustive needs a space of at most 1,000,000 "
                              f"architectures, this one has {space.size():,}")
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    from dataclasses import replace

    return replace(cfg, source=str(source))


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and validate an experiment YAML file (:func:`common.loaders.load_yaml`: safe,
    bounded in size, nesting and alias expansion, no repeated keys)."""
    return parse_config(load_yaml(path, what="config file"), str(path))


def dump_config(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML (what ``runs/<name>/config.yaml`` holds; a storage
    password masked: :mod:`experiments.storage_url`)."""
    from experiments.storage_url import mask_url

    d = cfg.to_dict()
    d["task"] = cfg.video_task.to_dict()  # fully resolved
    d["search"]["storage"] = mask_url(d["search"]["storage"])
    return ("# resolved by temponas; `temponas search` reads it back unchanged\n"
            + yaml.safe_dump(d, sort_keys=False, default_flow_style=None, width=100))
