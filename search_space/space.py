"""The search space: which temporal choices each stage allows.

Optuna parameters are stable dotted names (``down1.kind``, ``down1.count``, ``down1.heads``,
``down1.kernel_t``, ``down1.kernel_s``). Every stage's dimensions are suggested on every trial
(a static space, which NSGA-II and multivariate TPE model jointly); fields the chosen kind does
not use are canonicalized away by :class:`StageChoice`, so many parameter vectors map to the
same architecture and the evaluation cache (keyed by ``arch_id``) serves repeats. Dimensions
with a single allowed value are not suggested.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from common.limits import SPACE_RANGES, check_range
from search_space.arch import ArchConfig, StageChoice, TemporalKind
from search_space.backbone import BackboneSpec
from search_space.errors import ConfigError
from search_space.geometry import validate_arch, validate_choice, validate_task
from search_space.task import VideoTask

ALL_KINDS: tuple[TemporalKind, ...] = tuple(TemporalKind)


class TrialLike(Protocol):
    """The part of ``optuna.Trial`` that :meth:`SearchSpace.suggest` uses."""

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


@dataclass(frozen=True)
class StageSpace:
    """Allowed values per dimension for one stage. ``kinds`` may include ``none``."""

    stage: str
    kinds: tuple[TemporalKind, ...]
    counts: tuple[int, ...]
    heads: tuple[int, ...] = (8,)
    kernel_t: tuple[int, ...] = (3,)
    kernel_s: tuple[int, ...] = (3,)

    def choices(self) -> tuple[StageChoice, ...]:
        """The distinct :class:`StageChoice` values this stage allows (``none`` first if allowed)."""
        seen: dict[StageChoice, None] = {}
        for k, n, h, kt, ks in itertools.product(self.kinds, self.counts, self.heads,
                                                 self.kernel_t, self.kernel_s):
            seen.setdefault(StageChoice(k, n, h, kt, ks))
        return tuple(sorted(seen, key=lambda c: (not c.is_none, ALL_KINDS.index(c.kind), c.count,
                                                 c.heads, c.kernel_t, c.kernel_s)))

    def to_dict(self) -> dict[str, Any]:
        return {"kinds": [k.value for k in self.kinds], "counts": list(self.counts),
                "heads": list(self.heads), "kernel_t": list(self.kernel_t),
                "kernel_s": list(self.kernel_s)}


@dataclass(frozen=True)
class SearchSpace:
    """Temporal choices per stage of ``backbone`` for ``task``."""

    backbone: BackboneSpec
    task: VideoTask
    stages: tuple[StageSpace, ...]
    _choices: tuple[tuple[StageChoice, ...], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.validate()
        object.__setattr__(self, "_choices", tuple(s.choices() for s in self.stages))

    # ---- validation of the space itself ---------------------------------------------------
    def validate(self, where: str = "space") -> None:
        ids = [s.stage for s in self.stages]
        if ids != list(self.backbone.stage_ids):
            raise ConfigError(f"{where}: stages must be {', '.join(self.backbone.stage_ids)}, "
                              f"got {', '.join(ids)}")
        for s in self.stages:
            w = f"{where}.stages.{s.stage}"
            spec = self.backbone.stage(s.stage)
            for dim in ("kinds", "counts", "heads", "kernel_t", "kernel_s"):
                vals = getattr(s, dim)
                if not vals:
                    raise ConfigError(f"{w}.{dim}: must list at least one value")
                if len(set(vals)) != len(vals):
                    raise ConfigError(f"{w}.{dim}: duplicate values {list(vals)}")
            for n in s.counts:
                if not 1 <= n <= spec.units:
                    raise ConfigError(f"{w}.counts: {n} is outside 1..{spec.units} "
                                      f"(stage {s.stage} has {spec.units} unit(s))")
            # every combination that matters must be a valid choice
            for c in s.choices():
                validate_choice(spec, c, w)
        validate_task(self.backbone, self.task, f"{where}.task")

    # ---- size and enumeration -------------------------------------------------------------
    def stage_choices(self, stage_id: str) -> tuple[StageChoice, ...]:
        return self._choices[self.backbone.stage_ids.index(stage_id)]

    def size(self) -> int:
        """Number of distinct architectures."""
        return math.prod(len(c) for c in self._choices)

    def enumerate(self, limit: int = 1_000_000) -> Iterator[ArchConfig]:
        """Every distinct architecture (refused for spaces larger than ``limit``)."""
        if self.size() > limit:
            raise ConfigError(f"space has {self.size():,} architectures; enumeration is limited "
                              f"to {limit:,} (restrict the space or use a sampler)")
        ids = self.backbone.stage_ids
        for combo in itertools.product(*self._choices):
            yield ArchConfig(self.backbone.name, self.task, tuple(zip(ids, combo)))

    def arch(self, choices: Mapping[str, StageChoice]) -> ArchConfig:
        """An architecture of this backbone/task from per-stage choices (others none)."""
        arch = ArchConfig.create(self.backbone.name, self.task, choices, self.backbone.stage_ids)
        validate_arch(self.backbone, arch)
        return arch

    def contains(self, arch: ArchConfig) -> bool:
        return arch.task == self.task and all(
            c in self.stage_choices(sid) for sid, c in arch.stages)

    def sample(self, rng: np.random.Generator) -> ArchConfig:
        """A uniformly random distinct architecture."""
        ids = self.backbone.stage_ids
        picks = tuple(ch[int(rng.integers(len(ch)))] for ch in self._choices)
        return ArchConfig(self.backbone.name, self.task, tuple(zip(ids, picks)))

    def sample_distinct(self, n: int, seed: int,
                        first: tuple[ArchConfig, ...] = ()) -> list[ArchConfig]:
        """``n`` distinct architectures: ``first`` (in order), then uniform draws from a
        ``default_rng(seed)`` (fewer than ``n`` if the space is smaller). Deterministic."""
        rng = np.random.default_rng(seed)
        out: dict[str, ArchConfig] = {a.arch_id: a for a in first[:max(n, 0)]}
        tries = 0
        while len(out) < min(n, self.size()) and tries < 100 * n:
            a = self.sample(rng)
            out.setdefault(a.arch_id, a)
            tries += 1
        return list(out.values())

    # ---- Optuna ------------------------------------------------------------------------------
    def _dims(self, s: StageSpace) -> list[tuple[str, tuple[Any, ...]]]:
        dims = [("kind", tuple(k.value for k in s.kinds)), ("count", s.counts),
                ("heads", s.heads), ("kernel_t", s.kernel_t), ("kernel_s", s.kernel_s)]
        return [(d, v) for d, v in dims if len(v) > 1]

    def distributions(self) -> dict[str, tuple[Any, ...]]:
        """Optuna parameter name -> categorical choices."""
        return {f"{s.stage}.{d}": v for s in self.stages for d, v in self._dims(s)}

    def suggest(self, trial: TrialLike) -> ArchConfig:
        """Define-by-run: suggest every stage's dimensions on ``trial`` and return the arch."""
        picks = []
        for s in self.stages:
            val: dict[str, Any] = {"kind": s.kinds[0].value, "count": s.counts[0],
                                   "heads": s.heads[0], "kernel_t": s.kernel_t[0],
                                   "kernel_s": s.kernel_s[0]}
            for d, choices in self._dims(s):
                val[d] = trial.suggest_categorical(f"{s.stage}.{d}", list(choices))
            picks.append((s.stage, StageChoice(TemporalKind(val["kind"]), val["count"], val["heads"],
                                               val["kernel_t"], val["kernel_s"])))
        return ArchConfig(self.backbone.name, self.task, tuple(picks))

    def params_of(self, arch: ArchConfig) -> dict[str, Any]:
        """Optuna params that :meth:`suggest` turns back into ``arch`` (for ``enqueue_trial``)."""
        if not self.contains(arch):
            raise ConfigError(f"arch {arch.arch_id} is not in this search space")
        params: dict[str, Any] = {}
        for s in self.stages:
            c = arch.choice(s.stage)
            val = {"kind": c.kind.value, "count": c.count or s.counts[0],
                   "heads": c.heads or s.heads[0], "kernel_t": c.kernel_t or s.kernel_t[0],
                   "kernel_s": c.kernel_s or s.kernel_s[0]}
            for d, _ in self._dims(s):
                params[f"{s.stage}.{d}"] = val[d]
        return params

    # ---- description ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"backbone": self.backbone.name, "task": self.task.to_dict(),
                "stages": {s.stage: s.to_dict() for s in self.stages}}

    @classmethod
    def from_dict(cls, backbone: BackboneSpec, task: VideoTask, data: Mapping[str, Any] | None,
                  where: str = "space") -> SearchSpace:
        """The default space of ``backbone`` with per-stage restrictions from ``data``.

        ``data`` maps ``defaults`` and/or stage ids to ``{kinds, counts, heads, kernel_t,
        kernel_s}`` lists; a stage's entry overrides ``defaults`` which override the defaults.
        """
        data = dict(data or {})
        try:
            base = default_space(backbone, task)
        except ConfigError as e:
            raise ConfigError(_file_keys(str(e), where)) from None
        allowed = {"kinds", "counts", "heads", "kernel_t", "kernel_s"}
        for key in data:
            if key != "defaults" and key not in backbone.stage_ids:
                raise ConfigError(f"{where}.{key}: unknown stage (stages: "
                                  f"{', '.join(backbone.stage_ids)}, or 'defaults')")
            if not isinstance(data[key], Mapping):
                raise ConfigError(f"{where}.{key}: expected a mapping of dimension to list")
            bad = sorted(set(data[key]) - allowed)
            if bad:
                raise ConfigError(f"{where}.{key}.{bad[0]}: unknown dimension (known: "
                                  f"{', '.join(sorted(allowed))})")
        stages = []
        for s in base.stages:
            merged: dict[str, Any] = {}
            for src_key in ("defaults", s.stage):
                for dim, vals in (data.get(src_key) or {}).items():
                    w = f"{where}.{src_key}.{dim}"
                    if not isinstance(vals, (list, tuple)) or not vals:
                        raise ConfigError(f"{w}: expected a non-empty list")
                    if dim == "kinds":
                        merged[dim] = tuple(TemporalKind.parse(v, w) for v in vals)
                    else:
                        for v in vals:
                            if isinstance(v, bool) or not isinstance(v, int):
                                raise ConfigError(f"{w}: expected integers, got {v!r}")
                            check_range(w, v, SPACE_RANGES[dim])
                        merged[dim] = tuple(vals)
            spec = backbone.stage(s.stage)
            if "counts" in merged and s.stage not in data or (
                    "counts" in merged and "counts" not in (data.get(s.stage) or {})):
                # a default count list is clipped to what each stage can host
                merged["counts"] = tuple(n for n in merged["counts"] if n <= spec.units) or (spec.units,)
            if "heads" in merged and "heads" not in (data.get(s.stage) or {}):
                merged["heads"] = tuple(h for h in merged["heads"] if spec.channels % h == 0) or s.heads
            stages.append(StageSpace(s.stage, **{**_fields(s), **merged}))
        try:
            return cls(backbone, task, tuple(stages))
        except ConfigError as e:
            raise ConfigError(_file_keys(str(e), where)) from None


def _file_keys(msg: str, where: str) -> str:
    """Name keys as a config file writes them (``space.<stage>.<dim>``, ``task.*``), not as the
    SearchSpace object holds them (``space.stages.<stage>``, ``space.task``)."""
    return msg.replace("space.stages.", f"{where}.", 1).replace("space.task.", "task.", 1)


def _fields(s: StageSpace) -> dict[str, Any]:
    return {"kinds": s.kinds, "counts": s.counts, "heads": s.heads, "kernel_t": s.kernel_t,
            "kernel_s": s.kernel_s}


def default_space(backbone: BackboneSpec, task: VideoTask,
                  heads: tuple[int, ...] = (4, 8), kernel_t: tuple[int, ...] = (3, 5),
                  kernel_s: tuple[int, ...] = (3,)) -> SearchSpace:
    """Every kind, 1..units blocks, the given heads (those dividing the channels) and kernels."""
    stages = []
    for st in backbone.stages:
        hs = tuple(h for h in heads if st.channels % h == 0) or (st.heads,)
        stages.append(StageSpace(st.id, ALL_KINDS, tuple(range(1, st.units + 1)), hs,
                                 kernel_t, kernel_s))
    return SearchSpace(backbone, task, tuple(stages))
