"""``coreml`` backend, Linux side: convert probes to fp16 ``mlprogram`` packages + MIL features.

Route (see ``/work/shared/reference/coreml.md``): ``torch.export.export`` ->
``run_decompositions({})`` -> ``coremltools.convert(convert_to="mlprogram",
minimum_deployment_target=iOS17|iOS18, compute_precision=FLOAT16)``. coremltools cannot run
models on Linux, so :func:`export_bundle` writes one ``.mlpackage`` per probe, a
``manifest.json`` and the standalone ``run_on_device.py`` (from ``latency_models/runner/``)
that times them on a Mac and writes the measurement CSV.

MIL features: op counts by type of the converted program (recursing into nested blocks), e.g.
the transposes/reshapes around temporal layers and GroupNorm's lowering; cached as JSON per
(signature, target) so a signature is converted once.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.errors import ExportError
from common.fsio import atomic_dir, atomic_write_json
from latency_models.measurements import COLUMNS, probe_id
from latency_models.probes import Probe
from search_space.arch import ArchConfig
from search_space.backbone import BackboneSpec
from search_space.errors import ConfigError, TemponasError
from search_space.geometry import BlockSignature

TARGETS = ("iOS17", "iOS18")
RUNNER = Path(__file__).resolve().parent.parent / "runner" / "run_on_device.py"
MANIFEST_VERSION = 1


def _ct():
    warnings.filterwarnings("ignore", module="coremltools")
    import logging

    logging.getLogger("coremltools").setLevel(logging.ERROR)
    import coremltools as ct

    return ct


def _target(ct, target: str):
    if target not in TARGETS:
        raise ConfigError(f"--target: {target!r} is not supported (choose {', '.join(TARGETS)})")
    return getattr(ct.target, target)


def convert_module(module, example: tuple,
                   input_specs: Sequence[tuple[str, tuple[int, ...]]] | None = None,
                   target: str = "iOS18", output_names: Sequence[str] | None = None):
    """A torch module -> fp16 mlprogram ``MLModel`` (export route).

    Inputs are named as in ``input_specs``; without it, a whole video UNet's three inputs are
    named ``latents, timesteps, text`` (output ``noise_pred``) and other inputs ``x0, x1 …``.
    """
    import torch

    ct = _ct()
    module = module.eval()
    if input_specs is None:
        names = (("latents", "timesteps", "text") if len(example) == 3
                 else tuple(f"x{i}" for i in range(len(example))))
        input_specs = [(n, tuple(x.shape)) for n, x in zip(names, example)]
        if output_names is None and len(example) == 3:
            output_names = ("noise_pred",)
    with torch.no_grad():
        ep = torch.export.export(module, tuple(example)).run_decompositions({})
    kw = {}
    if output_names:
        kw["outputs"] = [ct.TensorType(name=n) for n in output_names]
    return ct.convert(ep, convert_to="mlprogram", minimum_deployment_target=_target(ct, target),
                      compute_precision=ct.precision.FLOAT16,
                      inputs=[ct.TensorType(name=n, shape=s) for n, s in input_specs],
                      skip_model_load=True, **kw)


def convert_block(sig: BlockSignature, target: str = "iOS18"):
    """The block ``sig`` (``search_space.modules.build_block``) as an fp16 mlprogram."""
    import torch

    from search_space.modules import build_block, example_inputs, input_specs

    torch.manual_seed(0)
    try:
        return convert_module(build_block(sig), example_inputs(sig), input_specs(sig), target)
    except TemponasError:
        raise
    except Exception as e:  # coremltools/torch.export raise many types
        raise ExportError(f"block {sig.op_name} ({probe_id(sig)}): Core ML conversion failed: "
                          f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e


def network_input_specs(arch: ArchConfig) -> tuple[tuple[str, tuple[int, ...]], ...]:
    t = arch.task
    return (("latents", (t.batch, t.latent_channels, t.num_frames, t.latent_height, t.latent_width)),
            ("timesteps", (t.batch,)), ("text", (t.batch, t.text_tokens, t.text_dim)))


def convert_network(backbone: BackboneSpec, arch: ArchConfig, target: str = "iOS18"):
    import torch

    from search_space.modules import build_model

    torch.manual_seed(0)
    specs = network_input_specs(arch)
    g = torch.Generator().manual_seed(0)
    ex = tuple(torch.rand(s, generator=g) * (1000 if n == "timesteps" else 1) for n, s in specs)
    try:
        return convert_module(build_model(backbone, arch.task, arch), ex, specs, target)
    except Exception as e:
        raise ExportError(f"network {arch.arch_id}: Core ML conversion failed: {type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}") from e


def mil_op_counts(mlmodel) -> dict[str, int]:
    """Op counts by type of a freshly converted model's MIL program (nested blocks included)."""
    prog = getattr(mlmodel, "_mil_program", None)
    counts: dict[str, int] = {}
    if prog is not None:
        def walk(block) -> None:
            for op in block.operations:
                counts[op.op_type] = counts.get(op.op_type, 0) + 1
                for b in getattr(op, "blocks", ()):
                    walk(b)

        walk(prog.functions["main"])
        return dict(sorted(counts.items()))
    # a reloaded package: read the protobuf program
    spec = mlmodel.get_spec()

    def walk_spec(block) -> None:
        for op in block.operations:
            counts[op.type] = counts.get(op.type, 0) + 1
            for b in op.blocks:
                walk_spec(b)

    for fn in spec.mlProgram.functions.values():
        for blk in fn.block_specializations.values():
            walk_spec(blk)
    return dict(sorted(counts.items()))


def summarize_mil(counts: dict[str, int]) -> dict[str, int]:
    """Feature groups: layout ops, normalization lowering, attention, compute, total (no consts)."""
    g = {"layout_ops": 0, "norm_ops": 0, "attention_ops": 0, "compute_ops": 0, "total_ops": 0}
    for op, n in counts.items():
        if op == "const":
            continue
        g["total_ops"] += n
        if op in ("transpose", "reshape", "expand_dims", "squeeze", "concat", "split", "tile",
                  "slice_by_index", "slice_by_size", "gather"):
            g["layout_ops"] += n
        elif op in ("reduce_mean", "layer_norm", "instance_norm", "batch_norm", "rsqrt", "sqrt",
                    "real_div", "square", "sub"):
            g["norm_ops"] += n
        elif op in ("scaled_dot_product_attention", "softmax", "matmul"):
            g["attention_ops"] += n
        elif op in ("conv", "linear", "conv_transpose"):
            g["compute_ops"] += n
    return g


def cache_dir() -> Path:
    return Path(os.environ.get("TEMPONAS_CACHE", Path.home() / ".cache" / "temponas")) / "mil"


def mil_features(sig: BlockSignature, target: str = "iOS18", cache: Path | None = None,
                 mlmodel=None) -> dict[str, Any]:
    """Cached ``{"ops": {op_type: n}, "groups": {...}}`` of ``sig`` converted for ``target``."""
    d = (cache or cache_dir()) / target
    f = d / f"{probe_id(sig)}.json"
    if f.exists():
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
            if data.get("signature") == sig.to_dict():
                return data
        except (OSError, json.JSONDecodeError):
            pass
    model = mlmodel if mlmodel is not None else convert_block(sig, target)
    ops = mil_op_counts(model)
    data = {"signature": sig.to_dict(), "target": target, "ops": ops, "groups": summarize_mil(ops)}
    atomic_write_json(f, data, indent=1, durable=False)  # a cache: derivable
    return data


def _save_package(mlmodel, dest: Path) -> None:
    with atomic_dir(dest) as tmp:
        mlmodel.save(str(tmp))


def export_bundle(out: str | Path, items: Sequence[Probe],
                  networks: Sequence[tuple[BackboneSpec, ArchConfig]] = (), *,
                  target: str = "iOS18", description: dict[str, Any] | None = None,
                  cache: Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Write ``out/packages/<id>.mlpackage`` per probe/network, ``out/manifest.json`` (written
    last, atomically: a bundle without a manifest is incomplete) and ``out/run_on_device.py``."""
    import coremltools
    import torch
    from tqdm import tqdm

    from search_space.modules import input_specs

    _target(_ct(), target)
    out = Path(out)
    pkg_dir = out / "packages"
    pkg_dir.mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, Any]] = []
    jobs: list[tuple[str, Any]] = [("block", p) for p in items] + [("network", n) for n in networks]
    for kind, obj in tqdm(jobs, desc=f"Core ML export ({target})", disable=not progress, unit="pkg"):
        if kind == "block":
            p: Probe = obj
            ml = convert_block(p.sig, target)
            mil = mil_features(p.sig, target, cache, mlmodel=ml)
            name = f"{p.id}.mlpackage"
            _save_package(ml, pkg_dir / name)
            entries.append({"scope": "block", "probe_id": p.id, "op": p.op_name,
                            "package": f"packages/{name}", "signature": p.sig.to_dict(),
                            "stages": list(p.stages),
                            "inputs": [{"name": n, "shape": list(s)} for n, s in input_specs(p.sig)],
                            "mil_ops": mil["ops"], "mil_groups": mil["groups"]})
        else:
            bb, arch = obj
            ml = convert_network(bb, arch, target)
            ops = mil_op_counts(ml)
            name = f"net_{arch.arch_id}.mlpackage"
            _save_package(ml, pkg_dir / name)
            entries.append({"scope": "network", "probe_id": arch.arch_id, "arch_id": arch.arch_id,
                            "package": f"packages/{name}", "arch": json.loads(arch.to_json()),
                            "backbone": bb.to_dict(),
                            "inputs": [{"name": n, "shape": list(s)} for n, s in network_input_specs(arch)],
                            "mil_ops": ops, "mil_groups": summarize_mil(ops)})
    manifest = {"format": "temponas-probe-bundle", "version": MANIFEST_VERSION,
                "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                "target": target, "precision": "fp16", "convert_to": "mlprogram",
                "route": "torch.export -> run_decompositions({}) -> coremltools.convert",
                "versions": {"coremltools": coremltools.__version__, "torch": torch.__version__},
                "csv_columns": list(COLUMNS), **(description or {}), "probes": entries}
    shutil.copyfile(RUNNER, out / "run_on_device.py")
    os.chmod(out / "run_on_device.py", 0o755)
    atomic_write_json(out / "manifest.json", manifest, indent=1)
    return manifest
