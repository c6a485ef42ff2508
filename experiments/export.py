"""Export one architecture of a run: ``json`` (arch + metrics), ``torch`` (safetensors state
dict + arch + backbone + loading recipe), ``coreml`` (an ``.mlpackage`` of the whole denoiser).

The weights (:func:`network_weights`): spatial = the run's backbone weights (``backbone:
{diffusers: DIR}`` or ``backbone_weights``) when it has them, else the fresh network (torch seed
0); temporal = the weights a ``short_train`` evaluation of this architecture trained, when the
run kept them (``evaluator.keep_weights``: ``<run>/weights/<arch_id>/s<seed>.safetensors``) and
the evaluation ran at the real width, else zero (temporal blocks start as identities). If the
kept weights are of a proxy-width evaluation they do not fit the full network: the evaluated
(scaled) network is written to ``proxy/`` as well. The Core ML package holds the same weights
at the precision the run's latency model priced (its metadata ``precision``: ``lut6`` =
6-bit palettized weights with fp16 activations, via coremltools' own ``palettize_weights``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import ConfigError, ExportError
from common.fsio import atomic_dir, atomic_write_bytes, atomic_write_json, atomic_write_text
from experiments.rundir import open_run, weights_path
from experiments.trials import trial_attrs
from search_space.arch import ArchConfig
from search_space.backbone import BackboneSpec

FORMATS = ("json", "torch", "coreml")
STATE_FORMAT = "temponas-state-dict"

LOADER_NOTE = """\
# Loading `{aid}`

`model.safetensors` holds the whole video UNet: {spatial}; {temporal}.
`backbone.json` is the backbone it is built on (preset, inline or diffusers: the same recipe).

```python
import json

from safetensors.torch import load_file
from search_space import ArchConfig, BackboneSpec
from search_space.modules import build_model

backbone = BackboneSpec.from_dict(json.load(open("backbone.json")))
arch = ArchConfig.load("{aid}.json")
model = build_model(backbone, arch.task, arch).eval()  # any batch size runs
model.load_state_dict(load_file("model.safetensors"))
# forward(latents (B,C,T,H,W), timesteps (B,), text (B,tokens,dim)) -> (B,C,T,H,W)
```

Frames and latent size are the task's (`arch.task`); build with another `VideoTask` for other
sizes: the weights do not depend on them. Spatial parameter names do not depend on the
temporal choices (other image-UNet weights load with `model.load_spatial_state_dict(...)` or
`search_space.modules.load_spatial_weights(model, files)`); temporal ones live under
`stages.<stage>.temporal.<i>`.
{reproduce}"""

REPRODUCE_NOTE = """
## Reproducing the evaluation

The temporal weights are those `short_train` scored (seed {seed}, {budget} steps). Rebuilt for
the task it ran (`eval_task`), the model gives its validation loss exactly:

```python
from safetensors import safe_open
from evaluators import validation_loss
from search_space import VideoTask

meta = safe_open("model.safetensors", "pt").metadata()
model = build_model(backbone, VideoTask.from_dict(json.loads(meta["eval_task"])), arch).eval()
model.load_state_dict(load_file("model.safetensors"))
evaluator_backbone = BackboneSpec.from_dict(json.loads(meta["evaluator_backbone"]))
loss = validation_loss(model, evaluator_backbone, json.loads(meta["evaluator_options"]))
assert loss == float.fromhex(meta["val_loss"])
```
"""


@dataclass
class NetworkWeights:
    """The weights of an export: ``state`` (the full network's state dict), what its spatial
    and temporal parts are, the safetensors ``metadata``, and ``proxy`` = ``(scaled backbone,
    scaled arch, state)`` of a proxy-width evaluation when that is what was kept."""

    state: dict[str, Any]
    spatial: str
    temporal: str
    metadata: dict[str, str] = field(default_factory=dict)
    proxy: tuple[BackboneSpec, ArchConfig, dict[str, Any]] | None = None

    def summary(self) -> dict[str, Any]:
        out = {"spatial": self.spatial, "temporal": self.temporal}
        for k in ("seed", "budget", "val_loss"):
            if k in self.metadata:
                out[k] = (float.fromhex(self.metadata[k]) if k == "val_loss"
                          else int(self.metadata[k]))
        if self.proxy is not None:
            out["proxy"] = "proxy/ holds the network the evaluation ran (proxy width)"
        return out


def _find_trial(run: Any, arch_id: str) -> Any:
    for t in run.study.get_trials(deepcopy=False):
        if t.user_attrs.get("arch_id") == arch_id and t.state.name == "COMPLETE":
            return t
    for t in run.study.get_trials(deepcopy=False):
        if t.user_attrs.get("arch_id") == arch_id:
            return t
    return None


def load_run_arch(run_dir: Path, arch_id: str) -> tuple[Any, ArchConfig, dict[str, Any]]:
    """``(run, arch, metrics)`` of ``arch_id`` in ``run_dir``."""
    run = open_run(run_dir)
    t = _find_trial(run, arch_id)
    if t is None:
        known = sorted({x.user_attrs.get("arch_id") for x in run.study.best_trials})[:5]
        raise ExportError(f"--arch-id: {arch_id!r} is not an architecture of {run_dir} "
                          f"(front members: {', '.join(known) or 'none'}; see pareto.csv)")
    arch = ArchConfig.from_json(trial_attrs(t)["arch"], where=f"{run_dir} trial {t.number} arch")
    objs = list(run.study.user_attrs.get("objectives", run.cfg.objectives))
    metrics: dict[str, Any] = {"arch_id": arch_id, "trial": t.number, "state": t.state.name,
                               "run": str(run_dir), "evaluator": run.cfg.evaluator.name,
                               "latency_model": run.cfg.latency_model}
    if t.values is not None:
        metrics.update(dict(zip(objs, t.values)))
    ua = trial_attrs(t)
    for k in ("latency_ms", "latency_low_ms", "latency_high_ms", "per_stage_ms", "memory_mb",
              "params", "flops", "quality"):
        if k in ua:
            metrics.setdefault(k, ua[k])
    return run, arch, metrics


def _kept_file(run: Any, arch_id: str, seed: int | None) -> Path | None:
    """The kept-weights file of ``arch_id`` (``seed``, else the first of the run's seeds that
    has one); an error when ``seed`` is asked for and missing."""
    seeds = [seed] if seed is not None else list(run.cfg.evaluator.seeds)
    for s in seeds:
        p = weights_path(run.run_dir, arch_id, s)
        if p.is_file():
            return p
    if seed is not None:
        raise ExportError(f"--seed: {run.run_dir} kept no weights for {arch_id} seed {seed} "
                          f"(run the search with evaluator.keep_weights: true)")
    return None


def network_weights(run: Any, arch: ArchConfig, seed: int | None = None) -> NetworkWeights:
    """The weights an export of ``arch`` from ``run`` holds (see the module docstring)."""
    import torch

    from search_space.diffusers_config import weight_files_at
    from search_space.modules import build_model, load_spatial_weights

    backbone = run.cfg.backbone_spec
    torch.manual_seed(0)
    model = build_model(backbone, arch.task, arch)
    spatial, temporal = "spatial layers freshly initialised (torch seed 0)", "temporal layers zero"
    wpath = run.cfg.weights_path
    if wpath is not None:
        files = weight_files_at(wpath, where="backbone weights")
        load_spatial_weights(model, files)
        spatial = f"spatial layers = the backbone's weights ({', '.join(f.name for f in files)})"
    meta = {"arch_id": arch.arch_id, "format": STATE_FORMAT, "backbone": backbone.name}
    proxy = None
    kept = _kept_file(run, arch.arch_id, seed)
    if kept is not None:
        from evaluators import evaluated_model

        ev_model, km = evaluated_model(str(kept), weights=wpath)
        info = (f"seed {km['seed']}, {km['budget']} steps, val_loss {km['val_loss']:.6g}, "
                f"from {kept.relative_to(run.run_dir)}")
        meta.update(seed=str(km["seed"]), budget=str(km["budget"]),
                    val_loss=float(km["val_loss"]).hex(),
                    eval_task=json.dumps(ev_model.task.to_dict(), sort_keys=True),
                    evaluator_backbone=json.dumps(km["backbone"], sort_keys=True),
                    evaluator_options=json.dumps(km["options"], sort_keys=True))
        if km["eval_backbone"] == backbone.to_dict():
            model.load_state_dict(ev_model.state_dict())
            temporal = f"temporal layers trained by short_train ({info})"
            if wpath is None:
                spatial = f"spatial layers = those the evaluation ran ({km['spatial']})"
        else:
            temporal += f" (the kept ones are of a proxy-width evaluation: see proxy/; {info})"
            proxy = (BackboneSpec.from_dict(km["eval_backbone"]),
                     ArchConfig.from_dict(km["eval_arch"]), _state(ev_model))
    meta.update(spatial=spatial, temporal=temporal)
    return NetworkWeights(_state(model), spatial, temporal, meta, proxy)


def _state(model: Any) -> dict[str, Any]:
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()}


def export_arch(run_dir: Path, arch_id: str, fmt: str, out: Path, *, seed: int | None = None,
                palettize_mode: str = "kmeans") -> list[Path]:
    if fmt not in FORMATS:
        raise ExportError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    run, arch, metrics = load_run_arch(run_dir, arch_id)
    out = Path(out)
    _check_out(out, arch.arch_id)
    backbone = run.cfg.backbone_spec
    written = [out / f"{arch_id}.json", out / f"{arch_id}.metrics.json"]
    if fmt == "json":
        _write_arch(written[0], arch)
        atomic_write_json(written[1], metrics)
        return written
    try:
        weights = network_weights(run, arch, seed)
    except ConfigError as e:  # weights gone/changed since the run: a one-line export error
        raise ExportError(str(e)) from None
    metrics["weights"] = weights.summary()
    if fmt == "torch":
        paths = export_torch(backbone, arch, out, weights)
    else:
        precision = _priced_precision(run.cfg.latency_model, palettize_mode)
        paths = export_coreml(backbone, arch, out, weights, precision)
        metrics["coreml"] = {"precision": precision.name, "compute": precision.compute,
                             "weight_bits": precision.weight_bits,
                             "palettize_mode": precision.mode if precision.weights == "lut" else None,
                             "package_mb": round(_size_mb(paths[0]), 3),
                             "priced_by": run.cfg.latency_model}
    _write_arch(written[0], arch)
    atomic_write_json(written[1], metrics)  # last: the export is complete
    return written + paths


def _exported_ids(out: Path) -> dict[str, Path]:
    """The architectures whose export files ``out`` holds: ``{arch_id: a file of it}``."""
    import re

    ids: dict[str, Path] = {}
    if not out.is_dir():
        return ids
    for p in sorted(out.iterdir()):
        m = re.fullmatch(r"([0-9a-f]{12})\.(json|metrics\.json|mlpackage)", p.name)
        if m:
            ids.setdefault(m.group(1), p)
    model = out / "model.safetensors"
    if model.is_file():
        try:
            from safetensors import safe_open

            with safe_open(str(model), "pt") as f:
                aid = (f.metadata() or {}).get("arch_id")
        except Exception:  # not one of ours: an export must not overwrite it either
            aid = "?"
        if aid:
            ids.setdefault(aid, model)
    return ids


def _check_out(out: Path, arch_id: str) -> None:
    """One export folder holds one architecture: exporting ``arch_id`` again (any format)
    rewrites its files; a folder with another architecture's export is refused."""
    others = {k: v for k, v in _exported_ids(out).items() if k != arch_id}
    if others:
        other, path = next(iter(others.items()))
        raise ExportError(f"--out: {out} already holds the export of another architecture "
                          f"({other}: {path}); export {arch_id} to a folder of its own")


def _write_arch(path: Path, arch: ArchConfig) -> None:
    atomic_write_text(path, json.dumps({**arch.to_dict(), "arch_id": arch.arch_id}, indent=2,
                                       sort_keys=True) + "\n")


def _size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def _priced_precision(latency_model: str, mode: str) -> Any:
    """The Core ML precision the run's latency model priced (its metadata ``precision``)."""
    import latency_models
    from latency_models.backends import Precision

    model = latency_models.load_latency_model(latency_model)
    text = str(dict(model.metadata).get("precision") or "fp16")
    try:
        return Precision.parse(text, mode, where=f"latency model {latency_model} precision")
    except ConfigError as e:
        raise ExportError(str(e)) from None


def export_torch(backbone: BackboneSpec, arch: ArchConfig, out: Path,
                 weights: NetworkWeights | None = None) -> list[Path]:
    """``model.safetensors`` + ``backbone.json`` + ``LOADING.md`` (+ ``proxy/``) in ``out``;
    without ``weights``: the freshly built network (torch seed 0)."""
    from safetensors.torch import save

    if weights is None:
        import torch

        from search_space.modules import build_model

        torch.manual_seed(0)
        w = NetworkWeights(_state(build_model(backbone, arch.task, arch)),
                           "spatial layers freshly initialised (torch seed 0)",
                           "temporal layers zero", {"arch_id": arch.arch_id, "format": STATE_FORMAT})
    else:
        w = weights
    paths = [out / "model.safetensors", out / "backbone.json", out / "LOADING.md"]
    if w.proxy is not None:
        pb, parch, pstate = w.proxy
        sub = out / "proxy"
        _write_arch(sub / f"{arch.arch_id}.json", parch)
        atomic_write_json(sub / "backbone.json", pb.to_dict())
        atomic_write_bytes(sub / "model.safetensors", save(pstate, metadata={
            **w.metadata, "spatial": "those the evaluation ran", "temporal": "trained"}))
        paths += [sub / "model.safetensors", sub / "backbone.json", sub / f"{arch.arch_id}.json"]
    atomic_write_bytes(paths[0], save(w.state, metadata=w.metadata))
    atomic_write_json(paths[1], backbone.to_dict())
    reproduce = ""
    if "val_loss" in w.metadata:
        where = " (in proxy/: the same recipe, run there)" if w.proxy is not None else ""
        reproduce = REPRODUCE_NOTE.format(seed=w.metadata["seed"], budget=w.metadata["budget"])
        reproduce = reproduce.replace("exactly:", f"exactly{where}:")
    atomic_write_text(paths[2], LOADER_NOTE.format(aid=arch.arch_id, spatial=w.spatial,
                                                   temporal=w.temporal, reproduce=reproduce))
    return paths


def export_coreml(backbone: BackboneSpec, arch: ArchConfig, out: Path,
                  weights: NetworkWeights | None = None, precision: Any = None) -> list[Path]:
    """Convert the whole denoiser to ``<out>/<arch_id>.mlpackage`` (mlprogram, iOS18) with the
    export's weights (default: the fresh network, torch seed 0) at ``precision`` (default
    fp16), by the probes' converter (``latency_models.backends.convert_network``): inputs
    ``latents``, ``timesteps``, ``text``, output ``noise_pred``. The precision is recorded in
    the package's description and user metadata."""
    from latency_models.backends import Precision, convert_network

    prec = precision or Precision()
    mlmodel = convert_network(backbone, arch, target="iOS18",
                              state_dict=weights.state if weights is not None else None,
                              precision=prec)
    what = weights.temporal if weights is not None else "fresh network"
    mlmodel.short_description = (f"temponas {arch.arch_id} ({arch.backbone}); precision "
                                 f"{prec.name}; {what}")
    mlmodel.user_defined_metadata["temponas.arch_id"] = arch.arch_id
    mlmodel.user_defined_metadata["temponas.precision"] = prec.name
    target = out / f"{arch.arch_id}.mlpackage"
    with atomic_dir(target) as tmp:
        mlmodel.save(str(tmp))
    return [target]
