"""Named backbones and their default video tasks.

``sd15`` and ``sd21`` follow the public diffusers configs of ``runwayml/stable-diffusion-v1-5``
and ``stabilityai/stable-diffusion-2-1-base`` (their parameter counts are checked in the tests).
``snapgen_v`` is OUR STAND-IN for SnapGen-V's image backbone, whose exact widths are not public;
every assumption is listed in its ``notes``.
"""

from __future__ import annotations

from collections.abc import Callable

from search_space.backbone import BackboneSpec, unet
from search_space.errors import ConfigError
from search_space.task import VideoTask


def _tiny() -> BackboneSpec:
    return unet("tiny", (32, 64), down_resnets=(1, 1), up_resnets=(2, 2),
                down_transformers=(1, 1), up_transformers=(1, 1), mid_resnets=2,
                mid_transformers=1, heads=(2, 4), cross_attention_dim=32, norm_groups=8,
                notes="Test-sized: two levels, one ResNet per down stage.")


def _small() -> BackboneSpec:
    return unet("small", (64, 128, 256), down_resnets=(1, 1, 1), up_resnets=(2, 2, 2),
                down_transformers=(0, 1, 1), up_transformers=(0, 1, 1), heads=(4, 4, 8),
                cross_attention_dim=128, norm_groups=32,
                notes="CPU-measurable in milliseconds per block; SD-like layout with no "
                      "full-resolution attention.")


def _sd15() -> BackboneSpec:
    return unet("sd15", (320, 640, 1280, 1280), down_resnets=(2, 2, 2, 2), up_resnets=(3, 3, 3, 3),
                down_transformers=(2, 2, 2, 0), up_transformers=(3, 3, 3, 0), heads=(8, 8, 8, 8),
                cross_attention_dim=768, norm_groups=32, linear_projection=False,
                notes="Stable Diffusion v1.5 UNet (diffusers config): 8 heads, 1x1-conv projections.")


def _sd21() -> BackboneSpec:
    return unet("sd21", (320, 640, 1280, 1280), down_resnets=(2, 2, 2, 2), up_resnets=(3, 3, 3, 3),
                down_transformers=(2, 2, 2, 0), up_transformers=(3, 3, 3, 0), head_dim=64,
                cross_attention_dim=1024, norm_groups=32, linear_projection=True,
                notes="Stable Diffusion 2.1-base UNet (diffusers config): head dim 64, linear "
                      "projections, 1024-d text (OpenCLIP ViT-H).")


SNAPGEN_V_NOTES = """\
Stand-in for SnapGen-V's image backbone (the paper does not publish widths). Assumptions:
1. Derived from the SD-v1.5 UNet compressed ~2.5x (third-party summaries of the paper):
   the 8x-downsampled 1280-channel level without attention is removed (3 levels instead of 4),
   widths are (320, 576, 896): full resolution keeps SD-v1.5's 320 channels (pruned in depth
   only), the two lower levels are narrowed from 640/1280.
2. SnapFusion/SnapGen-style pruning: no spatial transformer at full resolution (down0/up2),
   1 ResNet per down stage at full resolution, 2 elsewhere; up stages keep one more ResNet than
   their down stage so every skip is consumed.
3. Spatial attention with head dim 64, 768-d text embeddings (CLIP-L-like).
4. Default task: 16 frames of 40x64 latents (320x512 px video with an 8x VAE), batch 1
   (the 4-step adversarially distilled model runs without classifier-free guidance),
   77 text tokens.
The image backbone has ~0.34B parameters (342,947,652: SD-v1.5's 859,520,964 / 2.51; checked
in the tests). Temporal layers of the default space add 0 to ~0.34B: a uniformly random
architecture has ~0.44B in total (median), all-xattn1d everywhere 0.51B, conv3d (5x3x3)
everywhere 0.68B, so the space brackets the paper's 0.6B video model."""


def _snapgen_v() -> BackboneSpec:
    return unet("snapgen_v", (320, 576, 896), down_resnets=(1, 2, 2), up_resnets=(2, 3, 3),
                down_transformers=(0, 2, 2), up_transformers=(0, 3, 3), head_dim=64,
                cross_attention_dim=768, norm_groups=32, linear_projection=True,
                notes=SNAPGEN_V_NOTES)


_BACKBONES: dict[str, Callable[[], BackboneSpec]] = {
    "tiny": _tiny,
    "small": _small,
    "sd15": _sd15,
    "sd21": _sd21,
    "snapgen_v": _snapgen_v,
}

_TASKS: dict[str, VideoTask] = {
    "tiny": VideoTask(latent_channels=4, num_frames=4, latent_height=16, latent_width=16,
                      batch=1, text_tokens=8, text_dim=32),
    "small": VideoTask(latent_channels=4, num_frames=8, latent_height=32, latent_width=32,
                       batch=1, text_tokens=16, text_dim=128),
    "sd15": VideoTask(4, 16, 64, 64, 2, 77, 768),
    "sd21": VideoTask(4, 16, 64, 64, 2, 77, 1024),
    "snapgen_v": VideoTask(4, 16, 40, 64, 1, 77, 768),
}


def preset_names() -> tuple[str, ...]:
    return tuple(_BACKBONES)


def get_backbone(name: str) -> BackboneSpec:
    """The preset backbone called ``name``; a clear error listing the presets otherwise."""
    try:
        return _BACKBONES[name]()
    except KeyError:
        raise ConfigError(f"unknown preset {name!r} (presets: {', '.join(_BACKBONES)})") from None


def default_task(name: str) -> VideoTask:
    get_backbone(name)  # same error for a bad name
    return _TASKS[name]
