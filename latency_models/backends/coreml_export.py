"""``coreml`` backend, Linux side: convert probes to fp16 ``mlprogram`` packages + MIL features.

Route (see ``/work/shared/reference/coreml.md``): ``torch.export.export`` ->
``run_decompositions({})`` -> ``coremltools.convert(convert_to="mlprogram",
minimum_deployment_target=iOS17|iOS18, compute_precision=FLOAT16)``. coremltools cannot run
models on Linux, so :func:`export_bundle` writes one ``.mlpackage`` per probe, a
``manifest.json`` and the standalone ``run_on_device.py`` (from ``latency_models/runner/``)
that times them on a Mac and writes the measurement CSV. The same converter
(:func:`convert_module`; :func:`convert_network` for a whole denoiser with the input contract
of ``search_space.modules.network_input_specs``) makes ``temponas export --format coreml``'s
package, so an exported network is converted exactly as the measured probes were.

MIL features: op counts by type of the converted program (recursing into nested blocks), e.g.
the transposes/reshapes around temporal layers and GroupNorm's lowering; cached as JSON per
(signature, target) so a signature is converted once.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import re
import shutil
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
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


PALETTIZE_MODES = ("kmeans", "uniform")


@dataclass(frozen=True)
class Precision:
    """How a package stores and computes, in the latency models' vocabulary (their metadata
    ``precision``, e.g. ``lut6 (6-bit palettized weights, fp16 activations)``):

    * ``fp16`` / ``fp32``: weights and activations in that precision;
    * ``lut<n>`` (n = 1..8): weights palettized to ``2**n``-entry look-up tables per tensor
      (coremltools' ``palettize_weights``, ``mode`` kmeans or uniform), fp16 activations;
    * ``w8a16``: int8 weights (``linear_quantize_weights``, linear symmetric), fp16 activations.
    """

    compute: str = "fp16"
    weights: str = "float"  # float | lut | int8
    bits: int = 16
    mode: str = "kmeans"

    @property
    def name(self) -> str:
        return {"lut": f"lut{self.bits}", "int8": "w8a16"}.get(self.weights, self.compute)

    @property
    def weight_bits(self) -> int | None:
        """Bits per stored weight when compressed (None: the compute precision)."""
        return None if self.weights == "float" else self.bits

    @classmethod
    def parse(cls, text: str, mode: str = "kmeans", where: str = "precision") -> Precision:
        """``fp16``, ``fp32``, ``lut<n>`` or ``w8a16``; anything after the first word is a
        comment. ``w8a8`` (int8 activations) is refused: it needs calibration on a device."""
        word = (str(text).strip().split() or [""])[0].lower()
        if mode not in PALETTIZE_MODES:
            raise ConfigError(f"{where}: palettization mode {mode!r} is not one of "
                              f"{', '.join(PALETTIZE_MODES)}")
        m = re.fullmatch(r"lut(\d)", word)
        if m and 1 <= int(m.group(1)) <= 8:
            return cls("fp16", "lut", int(m.group(1)), mode)
        if word == "w8a16":
            return cls("fp16", "int8", 8, mode)
        if word in ("fp16", "fp32"):
            return cls(word, "float", 16 if word == "fp16" else 32, mode)
        raise ConfigError(f"{where}: {text!r} is not a Core ML precision temponas can export "
                          f"(fp16, fp32, lut1..lut8, w8a16)")


def palettize(mlmodel, bits: int, mode: str = "kmeans"):
    """``mlmodel`` with every weight palettized to ``bits`` bits (coremltools.optimize.coreml:
    ``OpPalettizerConfig(nbits=bits, mode=mode)``, per-tensor look-up tables)."""
    import coremltools.optimize.coreml as cto

    cfg = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(nbits=bits, mode=mode))
    with warnings.catch_warnings():  # k-means on a tensor with < 2**bits distinct values (e.g.
        warnings.simplefilter("ignore")  # zero-initialized temporal output layers) is exact
        return cto.palettize_weights(mlmodel, cfg)


def quantize_int8(mlmodel):
    """``mlmodel`` with int8 weights (``OpLinearQuantizerConfig(mode="linear_symmetric")``)."""
    import coremltools.optimize.coreml as cto

    cfg = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(
        mode="linear_symmetric", dtype="int8"))
    return cto.linear_quantize_weights(mlmodel, cfg)


def compress_weights(mlmodel, precision: Precision):
    """Apply ``precision``'s weight compression to a converted program (unchanged for
    ``fp16``/``fp32``)."""
    if precision.weights == "lut":
        return palettize(mlmodel, precision.bits, precision.mode)
    if precision.weights == "int8":
        return quantize_int8(mlmodel)
    return mlmodel


def convert_module(module, inputs: Sequence, *, input_names: Sequence[str] | None = None,
                   output_names: Sequence[str] | None = None, target: str = "iOS18",
                   trace_fallback: bool = False, precision: Precision | None = None):
    """A torch module -> mlprogram ``MLModel`` (the one Core ML converter of temponas), fp16
    unless ``precision`` says otherwise (fp32, palettized ``lut<n>`` or int8 ``w8a16`` weights).

    ``inputs``: example tensors in call order (their shapes become the package's fixed input
    shapes; integer tensors, e.g. token ids, become int32 inputs); ``input_names``: one per
    input (default ``x0, x1, ...``); ``output_names``: names of the outputs (default:
    coremltools' own). Route: ``torch.export.export`` -> ``run_decompositions({})`` ->
    ``coremltools.convert`` [-> :func:`compress_weights`] (works with any numpy; see the module
    docstring); ``trace_fallback`` retries through ``torch.jit.trace`` when the export route
    fails (some third-party networks of the latency fit set). The route taken is recorded in
    the model's ``user_defined_metadata["temponas.route"]``. Raises whatever torch/coremltools
    raise (callers name the failure).
    """
    import numpy as np
    import torch

    ct = _ct()
    tgt = _target(ct, target)
    prec = precision or Precision()
    names = list(input_names) if input_names is not None else [f"x{i}" for i in range(len(inputs))]
    if len(names) != len(inputs):
        raise ValueError(f"{len(names)} input names for {len(inputs)} inputs")
    module = module.eval()
    kw = {"convert_to": "mlprogram", "minimum_deployment_target": tgt,
          "compute_precision": (ct.precision.FLOAT32 if prec.compute == "fp32"
                                else ct.precision.FLOAT16), "skip_model_load": True,
          "inputs": [ct.TensorType(name=n, shape=tuple(x.shape),
                                   dtype=np.float32 if x.is_floating_point() else np.int32)
                     for n, x in zip(names, inputs)]}
    if output_names:
        kw["outputs"] = [ct.TensorType(name=n) for n in output_names]
    try:
        with torch.no_grad():
            ep = torch.export.export(module, tuple(inputs)).run_decompositions({})
        ml, route = ct.convert(ep, **kw), "torch.export"
    except Exception:
        if not trace_fallback:
            raise
        with torch.no_grad():
            traced = torch.jit.trace(module, tuple(inputs), strict=False)
        ml, route = ct.convert(traced, **kw), "torch.jit.trace"
    ml = compress_weights(ml, prec)
    ml.user_defined_metadata["temponas.route"] = route
    return ml


@contextlib.contextmanager
def _naming_failures(what: str) -> Iterator[None]:
    """Turn a torch.export/coremltools failure into one ExportError line naming ``what``."""
    try:
        yield
    except TemponasError:
        raise
    except Exception as e:  # coremltools/torch.export raise many types
        raise ExportError(f"{what}: Core ML conversion failed: {type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}") from e


def convert_block(sig: BlockSignature, target: str = "iOS18"):
    """The block ``sig`` (``search_space.modules.build_block``, torch seed 0) as an fp16
    mlprogram; inputs named and shaped as ``search_space.modules.input_specs(sig)``."""
    import torch

    from search_space.modules import build_block, example_inputs, input_specs

    torch.manual_seed(0)
    with _naming_failures(f"block {sig.op_name} ({probe_id(sig)})"):
        return convert_module(build_block(sig), example_inputs(sig),
                              input_names=[n for n, _ in input_specs(sig)], target=target)


def convert_network(backbone: BackboneSpec, arch: ArchConfig, target: str = "iOS18", *,
                    state_dict: Mapping[str, Any] | None = None,
                    precision: Precision | None = None):
    """The whole denoiser of ``arch`` (``search_space.modules.build_model``, torch seed 0, then
    ``state_dict`` if given, strictly) as an mlprogram (fp16 unless ``precision``): inputs
    ``latents, timesteps, text`` (``network_input_specs(arch.task)``), output ``noise_pred``."""
    import torch

    from search_space.modules import (
        NETWORK_INPUTS,
        NETWORK_OUTPUT,
        build_model,
        network_example_inputs,
    )

    torch.manual_seed(0)
    model = build_model(backbone, arch.task, arch)
    if state_dict is not None:
        model.load_state_dict(dict(state_dict))
    with _naming_failures(f"network {arch.arch_id}"):
        return convert_module(model, network_example_inputs(arch.task), input_names=NETWORK_INPUTS,
                              output_names=(NETWORK_OUTPUT,), target=target, precision=precision)


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

    from search_space.modules import input_specs, network_input_specs

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
                            "inputs": [{"name": n, "shape": list(s)} for n, s in network_input_specs(arch.task)],
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
