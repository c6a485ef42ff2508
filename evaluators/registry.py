"""Evaluator registry: built-in names, ``module:Class`` strings and the
``temponas.evaluators`` entry-point group.

Contract for a user evaluator class ``Cls`` (built-ins follow it too):

* ``Cls.from_options(backbone, options, where)`` if it defines that classmethod, else
  ``Cls(backbone, **options)``; unknown/bad options must raise ``ConfigError`` naming the key
  (a ``TypeError`` from ``Cls(**options)`` is turned into one).
* The object satisfies :class:`evaluators.base.Evaluator`: ``name``, ``direction``,
  ``config_key``, ``resources`` (Ray resources, e.g. ``{"num_cpus": 1, "num_gpus": 1}``) and
  ``evaluate(arch, *, seed, budget) -> EvalResult``; deterministic for a seed.

Configs are code: a ``module:Class`` string (or an installed entry point) makes temponas
import that module, which runs its top-level code, in the driver and in every Ray worker. Only
run configs you trust. The named target is checked to be an evaluator class
(:func:`check_evaluator_class`) before anything calls it.

Importing this module does not import torch: built-ins are loaded lazily by name.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from importlib import metadata
from typing import Any

from evaluators.base import Evaluator
from evaluators.options import DEFAULT_RESOURCES, parse_resources
from search_space.backbone import BackboneSpec
from search_space.errors import ConfigError

ENTRY_POINT_GROUP = "temponas.evaluators"

#: name -> "module:Class" of every built-in evaluator (loaded on first use).
BUILTIN: dict[str, str] = {
    "params": "evaluators._baselines:ParamsEvaluator",
    "flops": "evaluators._baselines:FlopsEvaluator",
    "grad_norm": "evaluators._saliency:GradNormEvaluator",
    "snip": "evaluators._saliency:SnipEvaluator",
    "synflow": "evaluators._synflow:SynflowEvaluator",
    "naswot": "evaluators._naswot:NaswotEvaluator",
    "zico": "evaluators._zico:ZicoEvaluator",
    "meco": "evaluators._meco:MecoEvaluator",
    "short_train": "evaluators._short_train:ShortTrainEvaluator",
    "supernet": "evaluators._supernet:SupernetEvaluator",
}

#: The zero-cost proxy a fast search uses by default, chosen by the fidelity audit
#: (benchmarks/results/proxy_fidelity.json, docs/proxies.md): on 24 snapgen_v candidates
#: naswot had the highest Kendall tau with short training at 30 steps, +0.43 [95% CI +0.19,
#: +0.65] (meco +0.41 but seed-vs-seed 0.51 vs 0.80; grad_norm/snip +0.14; synflow -0.36);
#: parameter count had -0.28.
DEFAULT_FAST_PROXY = "naswot"


def _entry_points() -> dict[str, metadata.EntryPoint]:
    try:
        eps = metadata.entry_points(group=ENTRY_POINT_GROUP)
    except Exception:  # a broken installed distribution must not break the built-ins  # noqa: BLE001
        return {}
    return {ep.name: ep for ep in eps}


def available() -> list[str]:
    """Registered evaluator names: built-ins then installed entry points (sorted)."""
    names = list(BUILTIN)
    names += sorted(n for n in _entry_points() if n not in BUILTIN)
    return names


def _load_target(spec: str, where: str) -> Any:
    mod_name, _, attr = spec.partition(":")
    if not mod_name or not attr:
        raise ConfigError(f"{where}: {spec!r} is not a 'module:Class' string")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise ConfigError(f"{where}: cannot import module {mod_name!r} ({e})") from None
    except Exception as e:  # noqa: BLE001 - the module's own top-level code failed
        raise ConfigError(f"{where}: importing module {mod_name!r} failed "
                          f"({type(e).__name__}: {e})") from None
    obj: Any = mod
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"{where}: module {mod_name!r} has no attribute {attr!r}") from None
    return obj


#: what an evaluator class must define (at class level, or annotate for ``name``/``direction``)
EVALUATOR_MEMBERS = ("name", "direction", "config_key", "resources", "evaluate")


def check_evaluator_class(target: Any, spec: str, where: str) -> type:
    """``target`` if it is a class that looks like an :class:`Evaluator` (every member of
    :data:`EVALUATOR_MEMBERS`, a callable ``evaluate``); else one :class:`ConfigError` line.

    Checked BEFORE anything is called: ``os:system``, ``subprocess:Popen`` or a module's string
    are refused without running them (importing the module already ran its top-level code)."""
    imported = f"module {spec.partition(':')[0]!r} was imported, its top-level code ran"
    if not inspect.isclass(target):
        raise ConfigError(f"{where}: {spec!r} is a {type(target).__name__}, not an evaluator "
                          f"class (a class with name, direction, config_key, resources and "
                          f"evaluate); nothing was called ({imported})")
    annotated = set()
    for klass in inspect.getmro(target):
        annotated |= set(getattr(klass, "__annotations__", {}))
    missing = [m for m in EVALUATOR_MEMBERS if not hasattr(target, m) and m not in annotated]
    if not callable(getattr(target, "evaluate", None)):
        missing = [m for m in missing if m != "evaluate"] + ["evaluate (a method)"]
    if missing:
        raise ConfigError(f"{where}: {spec!r} is a class but not an evaluator (missing: "
                          f"{', '.join(missing)}); nothing was called ({imported})")
    if getattr(target, "_is_protocol", False) or inspect.isabstract(target):
        raise ConfigError(f"{where}: {spec!r} is an abstract class or protocol; name a class "
                          f"that implements it")
    return target


def resolve(name: str, where: str = "evaluator") -> type:
    """The evaluator class registered under ``name`` or given as ``module:Class``.

    A ``module:Class`` string imports ``module`` (its top-level code runs: a config names code
    to run, so only run configs you trust) and then checks that ``Class`` is an evaluator class
    before anything calls it."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: expected an evaluator name or 'module:Class' string, "
                          f"got {name!r}")
    if name in BUILTIN:
        return _load_target(BUILTIN[name], where)
    eps = _entry_points()
    if name in eps:
        try:
            target = eps[name].load()
        except Exception as e:  # noqa: BLE001 - any plugin failure is a config error
            raise ConfigError(f"{where}: entry point {name!r} of group {ENTRY_POINT_GROUP} "
                              f"failed to load ({type(e).__name__}: {e})") from None
        return check_evaluator_class(target, eps[name].value, f"{where}: entry point {name!r}")
    if ":" in name:
        return check_evaluator_class(_load_target(name, where), name, where)
    raise ConfigError(f"{where}: unknown evaluator {name!r} (available: {', '.join(available())}; "
                      f"or give a 'module:Class' string)")


def create_evaluator(name: str, backbone: BackboneSpec, options: Mapping[str, Any] | None = None,
                     where: str = "evaluator") -> Evaluator:
    """Build the evaluator ``name`` for ``backbone`` with ``options``.

    ``where`` prefixes error messages (e.g. ``config.yaml: evaluator``); option errors name
    ``<where>.options.<key>``.
    """
    target = resolve(name, where)
    opts = dict(options or {})
    owhere = f"{where}.options"
    if hasattr(target, "from_options"):
        params = inspect.signature(target.from_options).parameters
        if "where" in params:
            ev = target.from_options(backbone, opts, where=owhere)
        else:
            ev = target.from_options(backbone, opts)
    else:
        try:
            inspect.signature(target).bind(backbone, **opts)
        except TypeError as e:
            key = _bad_key(target, opts)
            raise ConfigError(f"{owhere}.{key}: {e}" if key else f"{owhere}: {e}") from None
        except ValueError:  # no signature (builtin callables)
            pass
        ev = target(backbone, **opts)
    if not isinstance(ev, Evaluator):
        missing = [a for a in ("name", "direction", "config_key", "resources", "evaluate")
                   if not hasattr(ev, a)]
        raise ConfigError(f"{where}: {name!r} did not produce an Evaluator "
                          f"(missing: {', '.join(missing) or '?'})")
    return ev


def _bad_key(target: Any, opts: Mapping[str, Any]) -> str | None:
    try:
        params = inspect.signature(target).parameters
    except ValueError:
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    for k in opts:
        if k not in params:
            return k
    return None


def evaluator_resources(ev: Evaluator) -> dict[str, float]:
    """Validated Ray resources of ``ev`` (``{"num_cpus": 1.0}`` if it declares none)."""
    res = getattr(ev, "resources", None)
    if res is None:
        return dict(DEFAULT_RESOURCES)
    return parse_resources(res, f"evaluator {getattr(ev, 'name', '?')}.resources")


def ray_remote_options(ev: Evaluator) -> dict[str, Any]:
    """``ray.remote(...).options(**this)``: num_cpus/num_gpus/memory plus custom resources."""
    res = evaluator_resources(ev)
    out: dict[str, Any] = {}
    custom: dict[str, float] = {}
    for k, v in res.items():
        if k in ("num_cpus", "num_gpus", "memory"):
            out[k] = v
        else:
            custom[k] = v
    if custom:
        out["resources"] = custom
    return out
