"""Recipes of the fit set: build each published network exactly and convert it to Core ML.

A recipe (``data/recipes.json``) names a builder and its arguments; the builders are

* ``timm``: ``timm.create_model(name, pretrained=False)`` (reparameterized first when the
  published latency is of the inference-time graph: MobileOne, FastViT, MobileCLIP's MCi);
* ``torchvision``: ``torchvision.models.<name>()`` (the coremltools docs' MobileNetV2/V3, ResNet50);
* ``open_clip_image`` / ``open_clip_text``: a tower of ``open_clip.create_model(name)``;
* ``hf_distilbert`` / ``hf_depth_anything``: transformers models built from a config;
* ``temponas_unet_blocks``: a temponas backbone preset (``search_space.presets``), converted per
  unique block signature of :func:`search_space.geometry.image_blocks` and summed with the
  blocks' counts (exact up to the skip concatenations between blocks).

Weights are random (latency does not depend on their values); nothing is downloaded. timm,
torchvision, open_clip and transformers are needed only here, in the one-time extraction
environment (``make fitset-features``); the fit reads the committed feature tables.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search_space.errors import ConfigError

DATA_DIR = Path(__file__).resolve().parent / "data"
RECIPES_FILE = DATA_DIR / "recipes.json"
PRECISIONS = ("fp16", "w8a16", "w8a8", "lut2", "lut4", "lut6", "lut8")


@dataclass(frozen=True)
class Recipe:
    key: str
    spec: dict[str, Any]

    @property
    def builder(self) -> str:
        return str(self.spec["builder"])

    @property
    def sha256(self) -> str:
        """Hash of the recipe's JSON (sorted keys): the provenance of its features."""
        blob = json.dumps({"key": self.key, **self.spec}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()


def load_recipes(path: Path = RECIPES_FILE) -> dict[str, Recipe]:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot read recipes ({e})") from None
    out = {}
    for key, spec in doc.get("recipes", {}).items():
        if spec.get("builder") not in BUILDERS:
            raise ConfigError(f"{path}: recipe {key!r}: unknown builder {spec.get('builder')!r} "
                              f"(known: {', '.join(BUILDERS)})")
        out[key] = Recipe(key, spec)
    return out


def _example(inputs) -> tuple:
    import torch

    g = torch.Generator().manual_seed(0)
    ex = []
    for _name, shape, kind in inputs:
        if kind == "int":
            ex.append(torch.randint(0, 1000, tuple(shape), generator=g, dtype=torch.int32))
        else:
            ex.append(torch.rand(tuple(shape), generator=g))
    return tuple(ex)


def _reparam(model, spec):
    if spec.get("reparameterize"):
        from timm.utils.model import reparameterize_model

        model = reparameterize_model(model)
    return model.eval()


def _timm(spec):
    import timm

    return _reparam(timm.create_model(spec["name"], pretrained=False), spec)


def _torchvision(spec):
    import torchvision

    return getattr(torchvision.models, spec["name"])(weights=None).eval()


def _open_clip_model(spec):
    import open_clip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return open_clip.create_model(spec["name"], pretrained=None)


def _open_clip_image(spec):
    return _reparam(_open_clip_model(spec).visual, spec)


class _TextTower:
    """``forward(text) = clip.encode_text(text)`` as an ``nn.Module`` (built lazily: torch)."""

    @staticmethod
    def make(clip):
        import torch

        class TextTower(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m
                if hasattr(m, "visual"):
                    del m.visual

            def forward(self, text):
                return self.m.encode_text(text.long())

        return TextTower(clip).eval()


def _open_clip_text(spec):
    return _TextTower.make(_open_clip_model(spec))


def _hf(spec, config_cls: str, model_cls: str, output: str):
    import torch
    import transformers

    cfg_kw = dict(spec.get("config", {}))
    if "backbone_config" in cfg_kw:
        bc = dict(cfg_kw["backbone_config"])
        cfg_kw["backbone_config"] = transformers.AutoConfig.for_model(bc.pop("model_type"), **bc)
    cfg = getattr(transformers, config_cls)(**cfg_kw)
    cfg._attn_implementation = "eager"
    model = getattr(transformers, model_cls)(cfg).eval()

    class Wrapped(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            if not torch.is_floating_point(x):
                x = x.long()
            return getattr(self.m(x), output)

    return Wrapped(model).eval()


def _distilbert(spec):
    return _hf(spec, "DistilBertConfig", "DistilBertForSequenceClassification", "logits")


def _depth_anything(spec):
    """Depth Anything with its position embeddings interpolated once for the fixed input size:
    the bicubic resize (no Core ML op) is a constant of the shape, as in a fixed-shape export."""
    import torch

    wrapped = _hf(spec, "DepthAnythingConfig", "DepthAnythingForDepthEstimation", "predicted_depth")
    emb = wrapped.m.backbone.embeddings
    _, _, h, w = spec["inputs"][0][1]
    patch = int(spec["config"]["backbone_config"]["patch_size"])
    hidden = int(spec["config"]["backbone_config"]["hidden_size"])
    with torch.no_grad():
        dummy = torch.zeros(1, (h // patch) * (w // patch) + 1, hidden)
        pos = emb.interpolate_pos_encoding(dummy, h, w).detach().clone()
    emb.interpolate_pos_encoding = lambda embeddings, height, width: pos.to(embeddings.dtype)
    return wrapped


BUILDERS: dict[str, Callable | None] = {
    "timm": _timm, "torchvision": _torchvision, "open_clip_image": _open_clip_image,
    "open_clip_text": _open_clip_text, "hf_distilbert": _distilbert,
    "hf_depth_anything": _depth_anything,
    "temponas_unet_blocks": None,  # converted block by block, see unet_blocks
    "temponas_probes": None,       # one program per block signature, see probe_signatures
}


def build(recipe: Recipe):
    """``(torch module, example inputs)`` of a whole-network recipe."""
    import torch

    fn = BUILDERS[recipe.builder]
    if fn is None:
        raise ConfigError(f"recipe {recipe.key!r} is converted per block (unet_block_programs)")
    torch.manual_seed(0)
    return fn(recipe.spec), _example(recipe.spec["inputs"])


def unet_blocks(recipe: Recipe) -> Counter:
    """``Counter({BlockSignature: count})`` of a ``temponas_unet_blocks`` recipe."""
    from search_space.geometry import image_blocks
    from search_space.presets import default_task, get_backbone

    bb = get_backbone(recipe.spec["name"])
    task = default_task(recipe.spec["name"]).replace(**recipe.spec.get("task", {}))
    return Counter(b.sig for b in image_blocks(bb, task))


def probe_signatures(recipe: Recipe) -> list:
    """Block signatures of a ``temponas_probes`` recipe: the probes of the default space of a
    preset (its default task), ``calibration`` neighbours of it, and the image blocks of the
    ``also_unet`` recipes' UNets. These are temponas' own blocks through the Core ML path."""
    from latency_models.probes import calibration_probes, probes
    from search_space.presets import default_task, get_backbone
    from search_space.space import default_space

    bb = get_backbone(recipe.spec["name"])
    space = default_space(bb, default_task(recipe.spec["name"]))
    sigs = [p.sig for p in probes(space)]
    sigs += [p.sig for p in calibration_probes(space, int(recipe.spec.get("calibration", 0)), seed=0)]
    for other in recipe.spec.get("also_unet", []):
        sigs += list(unet_blocks(Recipe(other["name"], other)))
    return list(dict.fromkeys(sigs))


def convert(module, example: tuple, inputs, target: str = "iOS17"):
    """fp16 mlprogram of a recipe's ``module`` through the one converter
    (:func:`latency_models.backends.convert_module`, TorchScript trace as the fallback for
    networks torch.export cannot take). Returns ``(mlmodel, route)``."""
    from latency_models.backends.coreml_export import convert_module

    try:
        ml = convert_module(module, example, input_names=[n for n, _, _ in inputs], target=target,
                            trace_fallback=True)
    except Exception as e:  # noqa: BLE001 - many exporter/converter error types
        raise ConfigError(f"conversion failed: {type(e).__name__}: "
                          f"{str(e).splitlines()[0][:300] if str(e) else ''}") from e
    return ml, ml.user_defined_metadata["temponas.route"]


def compress(mlmodel, precision: str):
    """Apply the weight compression of ``precision`` to a converted fp16 program (the
    post-training ``coremltools.optimize.coreml`` path: linear int8 or uniform n-bit palettes,
    default weight threshold). Activation quantization (``w8a8``) needs on-device calibration
    (coremltools runs the model), so its activations are recorded as int8 by the row, not here."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is unknown (known: {', '.join(PRECISIONS)})")
    if precision == "fp16":
        return mlmodel
    from latency_models.backends.coreml_export import palettize, quantize_int8

    if precision.startswith("lut"):
        return palettize(mlmodel, int(precision[3:]), mode="uniform")
    return quantize_int8(mlmodel)
