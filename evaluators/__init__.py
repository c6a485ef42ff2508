"""Quality evaluators: the protocol, the registry of built-in and plug-in proxies, the proxy
scale, and the fidelity audit.

Torch-free at import: built-in evaluators are loaded by name on first use
(:func:`create_evaluator`); :func:`bundled_videos` (the bundled video data as an evaluator
configuration sees it), :func:`preview_frames` (any data source's videos, or what their latents
decode to), :func:`data_key` (the data's identity in cache keys), :func:`validation_loss`
(``short_train``'s held-out loss of any model) and :func:`read_kept_weights` /
:func:`evaluated_model` (kept weights of an evaluation, and the network it ran, rebuilt
exactly) import torch when first accessed.

Entry points: :func:`create_evaluator` / :func:`available` (the registry; user evaluators plug
in as ``module:Class`` strings or through the ``temponas.evaluators`` entry-point group),
:class:`Evaluator` (the protocol), :func:`run_audit` / :func:`write_report` (how far each
proxy can be trusted against short training).
"""

from typing import Any

from evaluators.audit import (
    BASELINES,
    REFERENCE,
    ZERO_COST,
    AuditSpec,
    markdown,
    run_audit,
    sample_archs,
    write_report,
)
from evaluators.base import Direction, EvalResult, Evaluator, ResumableEvaluator
from evaluators.options import parse_options, parse_resources
from evaluators.registry import (
    BUILTIN,
    DEFAULT_FAST_PROXY,
    ENTRY_POINT_GROUP,
    available,
    create_evaluator,
    evaluator_resources,
    ray_remote_options,
    resolve,
)
from evaluators.scale import ProxyScale

#: public names whose modules import torch: loaded on first access (``Runtime`` /
#: ``torch_session``: device, precision and seeding of one evaluation, for plug-ins too)
_LAZY = {"bundled_videos": "evaluators._torch_setup", "preview_frames": "evaluators._torch_setup",
         "data_key": "evaluators._torch_setup", "validation_loss": "evaluators._short_train",
         "read_kept_weights": "evaluators._kept", "evaluated_model": "evaluators._reload",
         "Runtime": "evaluators._device", "resolve_device": "evaluators._device",
         "torch_session": "evaluators._device"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'evaluators' has no attribute {name!r}")


__all__ = [
    "BASELINES", "BUILTIN", "DEFAULT_FAST_PROXY", "ENTRY_POINT_GROUP", "REFERENCE", "ZERO_COST",
    "AuditSpec", "Direction", "EvalResult", "Evaluator", "ProxyScale", "ResumableEvaluator",
    "Runtime", "available",
    "bundled_videos", "create_evaluator", "data_key", "evaluated_model", "evaluator_resources",
    "markdown", "parse_options", "parse_resources", "preview_frames", "ray_remote_options",
    "read_kept_weights", "resolve", "resolve_device", "run_audit", "sample_archs",
    "torch_session", "validation_loss", "write_report",
]
