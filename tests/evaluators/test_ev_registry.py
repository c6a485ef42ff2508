"""Registry contract: every registered evaluator builds, runs and is deterministic."""

from __future__ import annotations

import math
import sys
import textwrap

import pytest
from ev_helpers import tiny_options

from evaluators.base import Direction, EvalResult, Evaluator
from evaluators.registry import (
    DEFAULT_FAST_PROXY,
    available,
    create_evaluator,
    evaluator_resources,
    ray_remote_options,
)
from search_space.errors import ConfigError


def test_builtins_are_available():
    names = available()
    for n in ("params", "flops", "grad_norm", "snip", "synflow", "naswot", "zico", "meco",
              "short_train", "supernet"):
        assert n in names
    assert DEFAULT_FAST_PROXY in names


@pytest.mark.parametrize("name", available())
def test_contract(name, tiny, temporal_arch, cache_dir):
    opts = tiny_options(name, cache_dir)
    ev = create_evaluator(name, tiny, opts)
    assert isinstance(ev, Evaluator)
    assert isinstance(ev.direction, Direction)
    assert isinstance(ev.config_key, str) and ev.config_key
    assert evaluator_resources(ev)["num_cpus"] >= 0
    r1 = ev.evaluate(temporal_arch, seed=0, budget=2)
    assert isinstance(r1, EvalResult) and math.isfinite(r1.value) and r1.wall_time_s >= 0
    r2 = create_evaluator(name, tiny, opts).evaluate(temporal_arch, seed=0, budget=2)
    assert r2.value == r1.value  # deterministic for a seed, across instances
    # config key depends on scoring options only
    assert create_evaluator(name, tiny, opts).config_key == ev.config_key
    if opts:
        other = {**opts, "resources": {"num_cpus": 2}, "threads": 2}
        assert create_evaluator(name, tiny, other).config_key == ev.config_key
        changed = {**opts, "data": {**opts["data"], "seed": 7}}
        assert create_evaluator(name, tiny, changed).config_key != ev.config_key


@pytest.mark.parametrize("name", ["grad_norm", "snip", "zico"])
def test_gradient_proxies_are_zero_without_temporal_blocks(name, tiny, image_arch, cache_dir):
    ev = create_evaluator(name, tiny, tiny_options(name, cache_dir))
    assert ev.evaluate(image_arch, seed=0).value == 0.0


def test_zero_cost_seed_changes_score(tiny, temporal_arch, cache_dir):
    ev = create_evaluator("grad_norm", tiny, tiny_options("grad_norm", cache_dir))
    assert ev.evaluate(temporal_arch, seed=0).value != ev.evaluate(temporal_arch, seed=1).value


def test_resources_option(tiny):
    ev = create_evaluator("params", tiny, {"resources": {"num_cpus": 2, "num_gpus": 1, "vbench": 1}})
    assert ray_remote_options(ev) == {"num_cpus": 2.0, "num_gpus": 1.0, "resources": {"vbench": 1.0}}


@pytest.mark.parametrize("name, options, key", [
    ("params", {"bogus": 1}, "evaluator.options.bogus"),
    ("params", {"resources": {"num_gpus": -1}}, "evaluator.options.resources.num_gpus"),
    ("short_train", {"lr": "fast"}, "evaluator.options.lr"),
    ("short_train", {"scale": {"width_mult": 2.0}}, "scale.width_mult"),
    ("short_train", {"scale": {"frames": 4}}, "evaluator.options.scale.frames"),
    ("zico", {"num_batches": 1}, "num_batches"),
    ("naswot", {"spatial": "imagenet"}, "evaluator.options.spatial"),
    ("nonexistent_proxy", {}, "unknown evaluator 'nonexistent_proxy'"),
    ("no_such_module_xyz:Cls", {}, "no_such_module_xyz"),
    ("evaluators.registry:NoSuchClass", {}, "NoSuchClass"),
    ("naswot", {"threads": 10**20}, "evaluator.options.threads: must be <= 1,024"),
    ("short_train", {"pretrain": {"steps": 10**9}}, "evaluator.options.pretrain.steps: must be <="),
    ("params", {"resources": {"num_cpus": float("nan")}}, "evaluator.options.resources.num_cpus"),
    ("evaluators.base:Evaluator", {}, "abstract class or protocol"),
    ("evaluators.registry:available", {}, "not an evaluator class"),
])
def test_bad_options_name_the_key(name, options, key, tiny):
    with pytest.raises(ConfigError) as e:
        create_evaluator(name, tiny, options)
    msg = str(e.value)
    assert key in msg and "\n" not in msg


PLUGIN = textwrap.dedent('''
    from evaluators.base import Direction, EvalResult

    class TemporalBlocks:
        """Counts temporal blocks (a real, if crude, user evaluator)."""
        name = "temporal_blocks"
        direction = Direction.MAXIMIZE

        def __init__(self, backbone, weight=1.0):
            self.weight = float(weight)

        @property
        def config_key(self):
            return f"tb-{self.weight}"

        @property
        def resources(self):
            return {"num_cpus": 0.5}

        def evaluate(self, arch, *, seed=0, budget=0):
            return EvalResult(self.weight * arch.num_temporal_blocks)
''')


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    mod = f"temponas_test_plugin_{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / f"{mod}.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield mod, tmp_path
    sys.modules.pop(mod, None)


def test_module_class_string(plugin_module, tiny, temporal_arch):
    mod, _ = plugin_module
    ev = create_evaluator(f"{mod}:TemporalBlocks", tiny, {"weight": 2})
    assert ev.evaluate(temporal_arch).value == 2 * temporal_arch.num_temporal_blocks
    assert ray_remote_options(ev) == {"num_cpus": 0.5}
    with pytest.raises(ConfigError, match=r"evaluator\.options\.wieght"):
        create_evaluator(f"{mod}:TemporalBlocks", tiny, {"wieght": 2})


def test_entry_point_group(plugin_module, tiny, temporal_arch):
    mod, path = plugin_module
    dist = path / "temponas_test_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: temponas-test-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        f"[temponas.evaluators]\ntemporal_blocks = {mod}:TemporalBlocks\n")
    assert "temporal_blocks" in available()
    ev = create_evaluator("temporal_blocks", tiny, {})
    assert ev.evaluate(temporal_arch).value == temporal_arch.num_temporal_blocks


def test_package_api_is_torch_free_at_import():
    """``import evaluators`` loads no torch; every name of ``__all__`` resolves (the torch-backed
    ones on first access)."""
    import subprocess

    code = ("import sys, evaluators;"
            "assert 'torch' not in sys.modules, 'torch imported';"
            "missing = [n for n in evaluators.__all__ if not hasattr(evaluators, n)];"
            "assert not missing, missing;"
            "assert 'torch' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
