"""``temponas space``: describe a search space, or one architecture's cost.

``temponas space [CONFIG] [--preset NAME] [--json]``: stages (resolution, channels, allowed
choices), number of distinct architectures, image-backbone parameters -- of a preset's default
space, of an experiment config's space, or of the default space of a diffusers UNet folder (or
its ``config.json``).
``temponas space [CONFIG] [--preset NAME] --arch FILE.json [--json]``: that architecture's
per-block table (op, stage, shape, params, GFLOPs, activation MB) and totals.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.cli._args import add_preset, print_json
from experiments.cli._base import Command
from search_space.arch import ArchConfig
from search_space.backbone import BackboneSpec
from search_space.errors import ConfigError
from search_space.flops import backbone_params, image_cost, network_cost
from search_space.geometry import stage_resolution, validate_arch
from search_space.presets import default_task, get_backbone, preset_names
from search_space.space import SearchSpace, default_space
from search_space.task import VideoTask

CONFIG_HELP = ("an experiment YAML, a diffusers UNet folder or its config.json, or a preset "
               "name (default: --preset)")


@dataclass(frozen=True)
class SpaceSource:
    """What ``temponas space`` describes: a label, the backbone, its task and search space."""

    label: str
    backbone: BackboneSpec
    task: VideoTask
    space: SearchSpace


def space_source(config: str | None, preset: str | None) -> SpaceSource:
    """The search space a ``CONFIG`` positional (or ``--preset``) names."""
    if config is None or (config in preset_names() and not Path(config).exists()):
        name = config or preset
        bb, task = get_backbone(name), default_task(name)
        return SpaceSource(name, bb, task, default_space(bb, task))
    p = Path(config)
    if p.is_dir() or p.suffix == ".json":
        from search_space.diffusers_config import read_diffusers_unet

        unet = read_diffusers_unet(p)
        task = unet.default_task()
        return SpaceSource(str(config), unet.backbone, task, default_space(unet.backbone, task))
    if not p.exists():
        raise ConfigError(f"{config}: neither a preset ({', '.join(preset_names())}) nor a "
                          f"config file or diffusers folder")
    from experiments.config import load_config

    cfg = load_config(p)
    return SpaceSource(str(config), cfg.backbone_spec, cfg.video_task, cfg.search_space)


def describe_space(preset: str | SpaceSource) -> dict[str, Any]:
    """The JSON description of a search space (a preset name: its default space)."""
    src = preset if isinstance(preset, SpaceSource) else space_source(None, preset)
    backbone, task, space = src.backbone, src.task, src.space
    img = image_cost(backbone, task)
    stages = []
    for s, ss in zip(backbone.stages, space.stages):
        h, w = stage_resolution(backbone, task, s.id)
        stages.append({
            "id": s.id, "role": s.role.value, "level": s.level, "height": h, "width": w,
            "resolution": f"{h}x{w}", "channels": s.channels, "resnets": s.resnets,
            "transformers": s.transformers, "transformer_depth": s.transformer_depth,
            "spatial_heads": s.heads, "units": s.units, **ss.to_dict(),
            "choices": len(space.stage_choices(s.id)),
        })
    return {
        "preset": src.label, "backbone": backbone.name, "task": task.to_dict(),
        "size": space.size(), "num_stages": len(stages), "stages": stages,
        "backbone_params": backbone_params(backbone),
        "backbone_gflops": img.gflops, "backbone_weights_mb": img.weights_mb,
        "backbone_peak_activation_mb": img.peak_activation_mb,
    }


def describe_arch(preset: str | SpaceSource | None, path: str) -> dict[str, Any]:
    """The JSON description of the architecture in ``path`` (its per-block cost and totals) on
    a preset (default: the arch's backbone) or on the backbone of a :class:`SpaceSource`."""
    arch = ArchConfig.load(path)
    if isinstance(preset, SpaceSource):
        name, backbone = preset.label, preset.backbone
        if arch.backbone != backbone.name:
            raise ConfigError(f"{path}: backbone {arch.backbone!r} does not match {name}'s "
                              f"backbone {backbone.name!r}")
    else:
        name = preset or arch.backbone
        if preset is not None and arch.backbone != preset:
            raise ConfigError(f"{path}: backbone {arch.backbone!r} does not match --preset {preset!r}")
        backbone = get_backbone(name)
    validate_arch(backbone, arch, where=f"{path}: arch")
    cost = network_cost(backbone, arch.task, arch)
    blocks = [{
        "path": b.path, "op": b.sig.op_name, "stage": b.stage,
        "in_shape": list(b.sig.in_shape), "out_shape": list(b.sig.out_shape),
        "params": c.params, "gflops": c.gflops, "activation_mb": c.activation_mb,
    } for b, c in cost.per_block]
    return {
        "preset": name, "arch_id": arch.arch_id, "arch": arch.to_dict(),
        "params": cost.params, "temporal_params": cost.params_where(True),
        "backbone_params": cost.params_where(False),
        "flops": cost.flops, "gflops": cost.gflops, "weights_mb": cost.weights_mb,
        "peak_activation_mb": cost.peak_activation_mb, "peak_block": cost.peak_path,
        "memory_mb": cost.memory_mb, "blocks": blocks,
    }


def _fmt_list(vals: list[Any]) -> str:
    return ",".join(str(v) for v in vals)


def _print_space(d: dict[str, Any]) -> None:
    t = d["task"]
    print(f"{d['preset']} ({d['backbone']}): image backbone {d['backbone_params']:,} params, "
          f"{d['backbone_gflops']:.1f} GFLOPs per call on {t['batch']}x{t['num_frames']} frames "
          f"of {t['latent_height']}x{t['latent_width']} latents")
    head = f"{'stage':<6} {'res':>7} {'ch':>5} {'res/tf':>6}  {'kinds':<56} {'counts':<7} " \
           f"{'heads':<6} {'k_t':<5} {'k_s':<4} {'choices':>7}"
    print(head)
    print("-" * len(head))
    for s in d["stages"]:
        print(f"{s['id']:<6} {s['resolution']:>7} {s['channels']:>5} "
              f"{str(s['resnets']) + '/' + str(s['transformers']):>6}  {_fmt_list(s['kinds']):<56} "
              f"{_fmt_list(s['counts']):<7} {_fmt_list(s['heads']):<6} {_fmt_list(s['kernel_t']):<5} "
              f"{_fmt_list(s['kernel_s']):<4} {s['choices']:>7}")
    print(f"{d['num_stages']} stages, {d['size']:,} distinct architectures ({d['size']:.3g})")


def _print_arch(d: dict[str, Any]) -> None:
    print(f"arch {d['arch_id']} on {d['preset']}")
    head = f"{'block':<30} {'op':<22} {'in (B,C,T,H,W)':<22} {'out':<22} {'params':>12} " \
           f"{'GFLOPs':>9} {'act MB':>9}"
    print(head)
    print("-" * len(head))
    def shp(s):
        return "x".join(map(str, s))

    for b in d["blocks"]:
        print(f"{b['path']:<30} {b['op']:<22} {shp(b['in_shape']):<22} {shp(b['out_shape']):<22} "
              f"{b['params']:>12,} {b['gflops']:>9.2f} {b['activation_mb']:>9.1f}")
    print("-" * len(head))
    print(f"params {d['params']:,} (temporal {d['temporal_params']:,}, backbone "
          f"{d['backbone_params']:,}); {d['gflops']:.1f} GFLOPs; weights {d['weights_mb']:.0f} MB "
          f"+ peak activations {d['peak_activation_mb']:.0f} MB (at {d['peak_block']}) = "
          f"{d['memory_mb']:.0f} MB (fp16 model)")


class Space(Command):
    help = "describe a search space (preset, config, diffusers UNet) or an architecture's cost"
    description = ("Describe a search space (stages, resolutions, channels, allowed choices, "
                   "size): a preset's default space, an experiment config's, or the default "
                   "space of a diffusers UNet folder; with --arch the per-block cost of one "
                   "architecture.")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("config", nargs="?", metavar="CONFIG", help=CONFIG_HELP)
        add_preset(p, None, "defaults to the arch file's backbone when --arch is given")
        p.add_argument("--arch", metavar="FILE.json", help="an architecture JSON (ArchConfig)")
        p.add_argument("--json", action="store_true", help="machine-readable output on stdout")

    def take_action(self, args: argparse.Namespace) -> int:
        if args.config is not None and args.preset is not None:
            raise ConfigError("space: give CONFIG or --preset, not both")
        if args.arch is None and args.preset is None and args.config is None:
            raise ConfigError("space: give CONFIG or --preset NAME (and/or --arch FILE.json)")
        src = space_source(args.config, args.preset) if args.config is not None else None
        if args.arch is not None:
            d = describe_arch(src or args.preset, args.arch)
            if not args.json:
                _print_arch(d)
        else:
            d = describe_space(src or args.preset)
            if not args.json:
                _print_space(d)
        if args.json:
            print_json(d)
        return 0
