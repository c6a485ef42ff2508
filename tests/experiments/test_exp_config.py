"""Experiment configs: every shipped config loads; bad input names file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments.config import dump_config, load_config, parse_config
from search_space.errors import ConfigError

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "experiments" / "configs").glob("*.yaml"))
BASE = {"name": "t", "backbone": "tiny"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load_and_roundtrip(path, tmp_path):
    cfg = load_config(path)
    assert cfg.search_space.size() > 1
    out = tmp_path / "c.yaml"
    out.write_text(dump_config(cfg))
    again = load_config(out)
    assert again.identity() == cfg.identity()
    assert again.search == cfg.search


@pytest.mark.parametrize("data, key", [
    ({**BASE, "bogus": 1}, "bogus: unknown key"),
    ({**BASE, "search": {"workers": 0}}, "search.workers: must be >= 1"),
    ({**BASE, "search": {"n_trials": "ten"}}, "search.n_trials: expected an integer"),
    ({**BASE, "search": {"sampler": "cmaes"}}, "search.sampler: 'cmaes' is not one of"),
    ({**BASE, "search": {"sampler": "exhaustive"}, "space": {}}, "search.sampler: exhaustive needs"),
    ({**BASE, "evaluator": {"seeds": []}}, "evaluator.seeds: must list at least one"),
    ({**BASE, "evaluator": {"seeds": [0, 0]}}, "evaluator.seeds: duplicate"),
    ({**BASE, "evaluator": {"timeout_s": 0}}, "evaluator.timeout_s: must be >="),
    ({**BASE, "evaluator": {"num_cpus": 4}}, "evaluator.num_cpus: no longer read; use evaluator.options.resources"),
    ({**BASE, "evaluator": {"budget": True}}, "evaluator.budget: expected an integer"),
    ({**BASE, "evaluator": {"options": [1]}}, "evaluator.options: expected a mapping"),
    ({**BASE, "constraints": {"latency_budget_ms": -1}}, "constraints.latency_budget_ms: must be >="),
    ({**BASE, "constraints": {"memory_budget_mb": ".inf"}}, "constraints.memory_budget_mb: expected a number"),
    ({**BASE, "constraints": {"latency_ms": 3}}, "constraints.latency_ms: unknown key"),
    ({**BASE, "objectives": ["latency_ms", "memory_mb"]}, "objectives: must include 'quality'"),
    ({**BASE, "objectives": ["quality", "fid"]}, "objectives[1]: 'fid' is not one of"),
    ({**BASE, "backbone": "sd99"}, "backbone: unknown preset 'sd99'"),
    ({**BASE, "backbone": {"name": "x", "stages": []}}, "backbone.stages: expected a non-empty list"),
    ({**BASE, "task": {"num_frames": 0}}, "task.num_frames: expected a positive integer"),
    ({**BASE, "task": {"fps": 8}}, "task.fps: unknown key"),
    ({**BASE, "space": {"down7": {"kinds": ["conv1d"]}}}, "space.down7: unknown stage"),
    ({**BASE, "space": {"defaults": {"kinds": ["conv9d"]}}}, "space.defaults.kinds: unknown temporal kind"),
    ({**BASE, "name": "../escape"}, "name: '../escape' must be"),
    ({"backbone": "tiny"}, "name: missing (required)"),
    ({**BASE, "config_version": 99}, "config_version: 99 is not supported"),
    ([1, 2], "config: expected a mapping"),
])
def test_bad_config_names_file_and_key(data, key):
    with pytest.raises(ConfigError) as e:
        parse_config(data, "exp.yaml")
    msg = str(e.value)
    assert msg.startswith("exp.yaml: "), msg
    assert key in msg, msg
    assert "\n" not in msg


def test_malformed_yaml_and_missing_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nbackbone: [tiny\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: malformed YAML at line \d+ column \d+"):
        load_config(p)
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")


def test_with_overrides_and_identity_ignore_parallelism():
    cfg = parse_config({**BASE, "search": {"n_trials": 5, "workers": 1}})
    more = cfg.with_overrides(n_trials=50, workers=2)
    assert (more.search.n_trials, more.search.workers) == (50, 2)
    assert more.identity() == cfg.identity()
    other = parse_config({**BASE, "search": {"seed": 3}})
    assert other.identity() != cfg.identity()


def test_inline_backbone_and_yaml_safe_load(tmp_path):
    from search_space.presets import get_backbone

    bb = get_backbone("tiny").to_dict()
    bb["name"] = "mytiny"
    cfg = parse_config({"name": "inline", "backbone": bb, "task": {"text_dim": 32}})
    assert cfg.backbone_spec.name == "mytiny"
    p = tmp_path / "evil.yaml"
    p.write_text("name: !!python/object/apply:os.system ['echo hi']\nbackbone: tiny\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_config(p)


def test_bounded_loader_keeps_anchors_and_merge_keys(tmp_path):
    """The bounds refuse bombs, not ordinary YAML: anchors, aliases and ``<<`` merge keys (a
    merged key overridden by the mapping itself is not a duplicate) still load."""
    p = tmp_path / "anchors.yaml"
    p.write_text("name: anchors\nbackbone: tiny\n"
                 "space:\n  defaults: &d {kinds: [none, conv1d], heads: [2], kernel_t: [3]}\n"
                 "  down0:\n    <<: *d\n    kinds: [none]\n"
                 "evaluator:\n  seeds: &s [0, 1]\n  options: {}\n"
                 "search: {n_trials: 4, seed: 7}\n")
    cfg = load_config(p)
    assert cfg.evaluator.seeds == (0, 1)
    assert cfg.space["down0"]["kinds"] == ("none",) and cfg.space["down0"]["heads"] == (2,)


@pytest.mark.parametrize("text, fragment", [
    ("name: a\nname: b\nbackbone: tiny\n", "line 2: duplicate key 'name' (first on line 1)"),
    ("name: a\nbackbone: tiny\ntask: " + "[" * 65 + "]" * 65 + "\n", "nested deeper than 64"),
    ("name: a\nbackbone: tiny\nspace: &a {defaults: *a}\n", "recursive document"),
])
def test_bounded_loader_refuses(tmp_path, text, fragment):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=r"c\.yaml") as e:
        load_config(p)
    assert fragment in str(e.value) and "\n" not in str(e.value)
