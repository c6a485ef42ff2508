"""What a search ships to its Ray workers: the runtime environment (docs/clusters.md).

Joining a cluster (``--ray-address``), the job's ``runtime_env`` carries

* temponas's own packages (``common``, ``search_space``, ``latency_models``, ``evaluators``,
  ``experiments``) as ``py_modules``, so the workers run the driver's code, whatever (if
  anything) is installed on the nodes (``runtime_env.ship_project``);
* the module of a ``module:Class`` evaluator, resolved from the driver's import path, unless it
  is an installed package (those, like entry-point plug-ins, must be installed on every node)
  (``runtime_env.ship_plugins``);
* the config's ``working_dir`` (the workers' working directory: relative data paths in the
  evaluator options resolve there), ``py_modules`` and ``excludes``.

On a local Ray the workers already import temponas from this machine; a plug-in they cannot
import (a probe task tries) is added to their ``PYTHONPATH``. The config's ``env_vars`` go to
every evaluation (task level), e.g. ``TEMPONAS_CACHE`` on storage every node mounts.
Ray is imported lazily.
"""

from __future__ import annotations

import importlib
import os
import site
import sys
import sysconfig
from pathlib import Path
from typing import Any

from common.errors import ConfigError

#: temponas's packages (what ``setup.cfg`` installs)
PROJECT_PACKAGES = ("common", "search_space", "latency_models", "evaluators", "experiments")
#: left out of everything shipped (gitignore syntax; ``runtime_env.excludes`` adds more)
DEFAULT_EXCLUDES = ("__pycache__/", "*.pyc", ".git/", ".venv/", ".pytest_cache/", "*.mlpackage/",
                    "runs/")


def job_env(rc: Any, evaluator_name: str, *, joined: bool, where: str) -> dict[str, Any]:
    """``ray.init(runtime_env=...)`` of a search with ``runtime_env`` config ``rc`` and
    evaluator ``evaluator_name`` (``{}``: nothing to ship); ``joined``: it joins a cluster
    (``--ray-address``) rather than starting a local Ray. A missing path raises ConfigError
    naming ``<where>.<key>``."""
    mods: list[str] = []
    if joined and rc.ship_project:
        mods += project_paths()
    if joined and rc.ship_plugins:
        plugin = plugin_path(evaluator_name)
        if plugin is not None:
            mods.append(plugin)
    for i, p in enumerate(rc.py_modules):
        path = Path(p).expanduser()
        if not (path.is_dir() or (path.is_file() and path.suffix in (".py", ".whl"))):
            raise ConfigError(f"{where}.py_modules[{i}]: {p}: not a directory, .py or .whl file")
        mods.append(str(path.resolve()))
    env: dict[str, Any] = {}
    if rc.working_dir is not None:
        wd = Path(rc.working_dir).expanduser()
        if not wd.is_dir():
            raise ConfigError(f"{where}.working_dir: {rc.working_dir}: no such directory")
        env["working_dir"] = str(wd.resolve())
    if mods:
        env["py_modules"] = list(dict.fromkeys(mods))
    if env:
        env["excludes"] = list(dict.fromkeys(DEFAULT_EXCLUDES + tuple(rc.excludes)))
    return env


def task_env(rc: Any, evaluator_name: str, *, joined: bool) -> dict[str, Any]:
    """``.options(runtime_env=...)`` of every evaluation: the config's ``env_vars``, and on a
    local Ray whose workers cannot import the plug-in module, its directory on their
    ``PYTHONPATH`` (call with Ray connected: a probe task tries the import)."""
    env_vars = {str(k): str(v) for k, v in dict(rc.env_vars).items()}
    plugin = plugin_path(evaluator_name) if rc.ship_plugins and not joined else None
    if plugin is not None and not importable_on_workers(_top_module(evaluator_name)):
        # prepended to the user's PYTHONPATH or the workers' own (Ray expands ${VAR})
        rest = env_vars.get("PYTHONPATH", "${PYTHONPATH}")
        env_vars["PYTHONPATH"] = f"{Path(plugin).parent}{os.pathsep}{rest}"
    return {"env_vars": env_vars} if env_vars else {}


def project_paths() -> list[str]:
    """The directories of temponas's packages as this driver imports them."""
    out = []
    for name in PROJECT_PACKAGES:
        mod = importlib.import_module(name)
        out.append(str(Path(next(iter(mod.__path__))).resolve()))
    return out


def _top_module(evaluator_name: str) -> str:
    return evaluator_name.partition(":")[0].split(".")[0]


def plugin_path(evaluator_name: str) -> str | None:
    """The top-level package directory (or ``.py`` file) of a ``module:Class`` evaluator as
    the driver imports it; None for a registered name, a temponas module or an installed
    package."""
    if ":" not in evaluator_name:  # a built-in or an entry point: installed with a package
        return None
    top = _top_module(evaluator_name)
    if top in PROJECT_PACKAGES:
        return None
    mod = sys.modules.get(top) or importlib.import_module(top)
    paths = list(getattr(mod, "__path__", []) or [])
    path = paths[0] if paths else getattr(mod, "__file__", None)
    if not path or _installed(path):
        return None
    return str(Path(path).resolve())


def _installed(path: str) -> bool:
    """True for files of the interpreter's standard library or site-packages."""
    roots = set(site.getsitepackages()) | {site.getusersitepackages()}
    roots |= {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    p = Path(path).resolve()
    return any(p.is_relative_to(Path(r).resolve()) for r in roots if r)


def _can_import(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def importable_on_workers(name: str, timeout_s: float = 60.0) -> bool:
    """Whether a worker of the connected (local) Ray can import module ``name`` (one probe
    task on whichever node runs it)."""
    import ray

    probe = ray.remote(num_cpus=0, max_retries=0)(_can_import)
    try:
        return bool(ray.get(probe.remote(name), timeout=timeout_s))
    except Exception:  # noqa: BLE001 - cannot tell: ship it
        return False
