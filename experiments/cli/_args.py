"""Argument helpers shared by the commands: one ``--preset``, one set of task overrides
(``--frames/--batch/--height/--width/--tokens``), one reading of a CONFIG_OR_PRESET positional,
range checks, integer lists, YAML option files and JSON output."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from search_space.errors import ConfigError
from search_space.presets import default_task, get_backbone, preset_names

#: (flag, VideoTask field, help) of the task overrides
TASK_FLAGS = (
    ("frames", "num_frames", "override the task's num_frames (T)"),
    ("batch", "batch", "override the task's batch (2 = CFG)"),
    ("height", "latent_height", "override latent height"),
    ("width", "latent_width", "override latent width"),
    ("tokens", "text_tokens", "override the number of text tokens"),
)

CONFIG_OR_PRESET_HELP = "experiment YAML, a YAML with a 'space' section, or a preset name"


# ---- flags ------------------------------------------------------------------------------------
def add_preset(p: argparse.ArgumentParser, default: str | None, note: str = "") -> None:
    """``--preset NAME``: a backbone preset (its names listed in the help)."""
    p.add_argument("--preset", default=default, metavar="NAME",
                   help=f"backbone preset ({', '.join(preset_names())})" + (f"; {note}" if note else ""))


def add_task_args(p: argparse.ArgumentParser, preset_default: str | None = "small") -> None:
    """``--preset`` and the video-task overrides."""
    add_preset(p, preset_default)
    for flag, _, text in TASK_FLAGS:
        p.add_argument(f"--{flag}", type=int, help=text)


def add_config_or_preset(p: argparse.ArgumentParser, help: str = CONFIG_OR_PRESET_HELP,
                         optional: bool = True) -> None:
    """The positional CONFIG_OR_PRESET (``dest="config"``)."""
    p.add_argument("config", nargs="?" if optional else None, metavar="CONFIG_OR_PRESET", help=help)


def add_calibration_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calibration", type=int, default=0, metavar="N",
                   help="add N calibration blocks from neighbours of the space (other widths, "
                        "latent sizes, frame counts, heads, kernels): they let a predictor "
                        "generalize to signatures that were never measured")


# ---- values -----------------------------------------------------------------------------------
def at_least(flag: str, value: int | float | None, minimum: int | float = 1) -> None:
    """``flag: must be >= minimum, got value`` unless ``value`` is None or large enough."""
    if value is not None and value < minimum:
        raise ConfigError(f"{flag}: must be >= {minimum}, got {value}")


def in_range(flag: str, value: int | float | None, key: str) -> None:
    """``flag: must be <= max, got value`` unless ``value`` is None or within the range
    :data:`common.limits.OPTION_RANGES` declares for the config key ``key``."""
    from common.limits import OPTION_RANGES, check_range

    if value is not None:
        check_range(flag, value, OPTION_RANGES[key])


def int_list(text: str, flag: str) -> tuple[int, ...]:
    """``"15,30"`` -> ``(15, 30)``; a one-line error naming ``flag`` otherwise."""
    try:
        vals = tuple(int(x) for x in str(text).split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"{flag}: expected comma-separated integers, got {text!r}") from None
    if not vals:
        raise ConfigError(f"{flag}: expected at least one integer")
    return vals


def task_overrides(args: argparse.Namespace) -> dict[str, int]:
    """The VideoTask fields the task flags set (commands without them give ``{}``)."""
    return {fld: v for flag, fld, _ in TASK_FLAGS if (v := getattr(args, flag, None)) is not None}


def with_overrides(task, args: argparse.Namespace):
    over = task_overrides(args)
    return task.replace(**over) if over else task


def backbone_task(args: argparse.Namespace, preset: str | None = None):
    """(BackboneSpec, VideoTask) of ``preset`` (default ``args.preset``) with the overrides."""
    name = preset or args.preset
    return get_backbone(name), with_overrides(default_task(name), args)


def read_yaml(path: str | Path, hint: str = "") -> Any:
    """The YAML file ``path`` (:func:`common.loaders.load_yaml`: safe and bounded);
    unreadable files and bad YAML are one-line errors (``hint`` follows a read error)."""
    from common.loaders import load_yaml

    try:
        return load_yaml(path)
    except ConfigError as e:
        msg = str(e)
        if hint and ("cannot read" in msg or "no such" in msg or "is a directory" in msg):
            msg += hint
        raise ConfigError(msg) from None


def read_options(path: str | None) -> dict[str, Any]:
    """An ``--options FILE.yaml`` mapping (``{}`` without a file or for an empty one)."""
    if not path:
        return {}
    data = read_yaml(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of evaluator options")
    return data


# ---- CONFIG_OR_PRESET -------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """What a CONFIG_OR_PRESET names: a backbone, its search space and (for an experiment
    config) the evaluator options."""

    backbone: Any
    space: Any
    evaluator_options: dict[str, Any] = field(default_factory=dict)


def resolve_target(args: argparse.Namespace, *, space_files: bool = True) -> Target:
    """The search space ``args.config`` names, with the task overrides of ``args`` applied.

    ``args.config`` is a preset name, an experiment YAML (``temponas search`` config: backbone,
    task, space, evaluator options) or, with ``space_files``, a YAML holding only a ``space``
    section (applied to ``args.preset``). Without ``args.config``: the default space of
    ``args.preset``. An existing file wins over a preset of the same name."""
    from search_space.space import SearchSpace, default_space

    cfg = getattr(args, "config", None)
    if cfg and not Path(cfg).exists():
        if cfg not in preset_names():
            raise ConfigError(f"{cfg}: neither a preset ({', '.join(preset_names())}) nor a config file")
        bb, task = backbone_task(args, cfg)
        return Target(bb, default_space(bb, task))
    if not cfg:
        bb, task = backbone_task(args)
        return Target(bb, default_space(bb, task))
    if space_files:
        data = read_yaml(cfg, hint=f"; give an experiment YAML or a preset ({', '.join(preset_names())})") or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{cfg}: expected a mapping at the top level")
        if "backbone" not in data:  # only a space (or a `space:` section) for --preset
            bb, task = backbone_task(args)
            space = data.get("space") if isinstance(data.get("space"), dict) else data
            return Target(bb, SearchSpace.from_dict(bb, task, space, where=f"{cfg}:space"))
    from experiments.config import load_config

    ec = load_config(cfg)
    bb, task = ec.backbone_spec, with_overrides(ec.video_task, args)
    space = SearchSpace.from_dict(bb, task, dict(ec.space), where=f"{cfg}:space")
    return Target(bb, space, ec.evaluator_options())


def print_json(obj: Any, **kw: Any) -> None:
    """``obj`` as indented JSON on stdout (``json.dumps`` keywords pass through)."""
    json.dump(obj, sys.stdout, **{"indent": 2, **kw})
    sys.stdout.write("\n")
