"""Shared plumbing of the built-in evaluators: options, config key, resources, timing."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from evaluators.base import Direction, EvalResult
from evaluators.options import DEFAULT_RESOURCES, options_dict, parse_options
from search_space.arch import ArchConfig
from search_space.backbone import BackboneSpec
from search_space.errors import ConfigError
from search_space.geometry import validate_arch
from search_space.task import VideoTask

#: Bump when a change to the evaluators' code changes scores: it is part of every cache key.
CODE_VERSION = "evaluators-1"

#: option keys that say where/how fast an evaluation runs but never change its score:
#: they are left out of config keys (so caches are shared across machines, devices and thread
#: counts; a score on CUDA is close to, not bit-identical with, the CPU's).
#: ``weights`` is a path: the content hash of the files goes into the key instead
#: (``TorchOptions.scoring_dict``).
NON_SCORING_KEYS = ("resources", "threads", "cache_dir", "cache_results", "weights",
                    "keep_weights", "device")

#: scoring options added after config keys were first published, with the value that
#: reproduces the earlier scores: left out of the key at that value, so adding an option does
#: not invalidate existing caches and runs
KEY_NEUTRAL_DEFAULTS: Mapping[str, Any] = {"precision": "fp32"}


@dataclass(frozen=True)
class BaseOptions:
    """Options every built-in evaluator accepts.

    ``resources``: Ray resources of one evaluation; unset (None) = one CPU, plus one GPU when
    the evaluator's ``device`` is ``cuda[:i]`` (see :attr:`BuiltinEvaluator.resources`)."""

    resources: Mapping[str, float] | None = None

    def scoring_dict(self) -> dict[str, Any]:
        """The options that change scores, as config keys hold them (runtime-only keys out)."""
        d = options_dict(self)
        for k in NON_SCORING_KEYS:
            d.pop(k, None)
        for k, neutral in KEY_NEUTRAL_DEFAULTS.items():
            if d.get(k, object()) == neutral:
                d.pop(k)
        return d


class BuiltinEvaluator:
    """Base of the built-in evaluators: parses options, computes ``config_key``.

    Subclasses set ``name``, ``direction``, ``Options`` (a frozen dataclass deriving from
    :class:`BaseOptions`) and implement ``_score(arch, seed, budget) -> (value, extras)``.
    """

    name: ClassVar[str] = ""
    direction: ClassVar[Direction] = Direction.MAXIMIZE
    Options: ClassVar[type] = BaseOptions
    #: True if ``budget`` changes the score (short training); False for zero-cost proxies.
    uses_budget: ClassVar[bool] = False

    def __init__(self, backbone: BackboneSpec, options: Mapping[str, Any] | None = None,
                 where: str | None = None) -> None:
        self.backbone = backbone
        self.options = parse_options(self.Options, options, where or f"evaluators.{self.name}")

    @classmethod
    def from_options(cls, backbone: BackboneSpec, options: Mapping[str, Any] | None,
                     where: str | None = None) -> BuiltinEvaluator:
        return cls(backbone, options, where)

    @property
    def resources(self) -> Mapping[str, float]:
        """The user's ``resources`` option, else one CPU (+ one GPU for a ``cuda`` device)."""
        if self.options.resources is not None:
            return dict(self.options.resources)
        device = getattr(self.options, "device", "cpu")
        return {**DEFAULT_RESOURCES, **({"num_gpus": 1.0} if device.startswith("cuda") else {})}

    @property
    def gpu_if_available(self) -> bool:
        """True if the evaluator would use a GPU when it gets one (``device: auto`` and no
        ``resources`` option): a search then reserves one GPU per evaluation on a cluster
        that has GPUs."""
        return self.options.resources is None and getattr(self.options, "device", None) == "auto"

    @property
    def config_key(self) -> str:
        blob = json.dumps({"name": self.name, "options": self.options.scoring_dict(),
                           "backbone": self.backbone.to_dict(), "code": CODE_VERSION},
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        """JSON-ready description (name, direction, options, config key)."""
        return {"name": self.name, "direction": self.direction.value,
                "options": options_dict(self.options), "config_key": self.config_key}

    def setup(self, task: VideoTask, progress: bool | None = None) -> dict[str, Any]:
        """Build what every evaluation of ``task`` shares (the torch evaluators: the encoded
        data) before the first one, so bad data fails a search before it starts rather than
        in every trial. Called once by the search driver; returns what it did."""
        return {}

    def check_arch(self, arch: ArchConfig) -> None:
        if arch.backbone != self.backbone.name:
            raise ConfigError(f"arch.backbone: {arch.backbone!r} does not match the evaluator's "
                              f"backbone {self.backbone.name!r}")
        validate_arch(self.backbone, arch)

    def evaluate(self, arch: ArchConfig, *, seed: int = 0, budget: int = 0) -> EvalResult:
        self.check_arch(arch)
        t0 = time.perf_counter()
        value, extras = self._score(arch, int(seed), int(budget))
        return EvalResult(float(value), dict(extras), time.perf_counter() - t0)

    def _score(self, arch: ArchConfig, seed: int, budget: int) -> tuple[float, Mapping[str, float]]:
        raise NotImplementedError
