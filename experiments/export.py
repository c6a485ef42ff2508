"""Export one architecture of a run: ``json`` (arch + metrics), ``torch`` (safetensors state
dict + arch + loader note), ``coreml`` (an ``.mlpackage`` of the whole denoiser).

Weights are those of a freshly built network (seed 0): the search scores architectures; it does
not train the final model. The export gives the network to train, measure or ship.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common.errors import ExportError
from common.fsio import atomic_dir, atomic_write_bytes, atomic_write_json, atomic_write_text
from experiments.rundir import open_run
from experiments.trials import trial_attrs
from search_space.arch import ArchConfig

FORMATS = ("json", "torch", "coreml")

LOADER_NOTE = """\
# Loading `{aid}`

```python
from safetensors.torch import load_file
from search_space.arch import ArchConfig
from search_space.modules import build_model
from search_space.presets import get_backbone   # or BackboneSpec.from_dict(json.load(open("backbone.json")))

arch = ArchConfig.load("{aid}.json")
model = build_model(get_backbone(arch.backbone), arch.task, arch)
model.load_state_dict(load_file("model.safetensors"))
# forward(latents (B,C,T,H,W), timesteps (B,), text (B,tokens,dim)) -> (B,C,T,H,W)
```

The weights are the freshly initialised network (torch seed 0); train it before use.
Spatial parameter names do not depend on the temporal choices, so pretrained image-UNet weights
load with `model.load_spatial_state_dict(...)`; temporal ones live under
`stages.<stage>.temporal.<i>`.
"""


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


def export_arch(run_dir: Path, arch_id: str, fmt: str, out: Path) -> list[Path]:
    if fmt not in FORMATS:
        raise ExportError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    run, arch, metrics = load_run_arch(run_dir, arch_id)
    out = Path(out)
    backbone = run.cfg.backbone_spec
    written = [out / f"{arch_id}.json", out / f"{arch_id}.metrics.json"]
    atomic_write_text(written[0], json.dumps({**arch.to_dict(), "arch_id": arch_id}, indent=2,
                                             sort_keys=True) + "\n")
    atomic_write_json(written[1], metrics)
    if fmt == "json":
        return written
    if fmt == "torch":
        return written + export_torch(backbone, arch, out)
    return written + export_coreml(backbone, arch, out)


def _model(backbone: Any, arch: ArchConfig) -> Any:
    import torch

    from search_space.modules import build_model

    torch.manual_seed(0)
    return build_model(backbone, arch.task, arch).eval()


def export_torch(backbone: Any, arch: ArchConfig, out: Path) -> list[Path]:
    from safetensors.torch import save

    model = _model(backbone, arch)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    paths = [out / "model.safetensors", out / "backbone.json", out / "LOADING.md"]
    atomic_write_bytes(paths[0], save(state, metadata={"arch_id": arch.arch_id,
                                                       "format": "temponas-state-dict"}))
    atomic_write_json(paths[1], backbone.to_dict())
    atomic_write_text(paths[2], LOADER_NOTE.format(aid=arch.arch_id))
    return paths


def export_coreml(backbone: Any, arch: ArchConfig, out: Path) -> list[Path]:
    """Convert the whole denoiser to ``<out>/<arch_id>.mlpackage`` (mlprogram, fp16, iOS18):
    the freshly built network (torch seed 0, as :func:`export_torch`), inputs ``latents``,
    ``timesteps``, ``text``, output ``noise_pred``, by the probes' converter
    (``latency_models.backends.coreml_export.convert_network``)."""
    from latency_models.backends.coreml_export import convert_network

    mlmodel = convert_network(backbone, arch, target="iOS18")
    mlmodel.short_description = f"temponas {arch.arch_id} ({arch.backbone})"
    target = out / f"{arch.arch_id}.mlpackage"
    with atomic_dir(target) as tmp:
        mlmodel.save(str(tmp))
    return [target]
