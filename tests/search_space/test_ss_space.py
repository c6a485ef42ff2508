"""SearchSpace: Optuna define-by-run round trip, size, sampling, validation of the space."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from search_space.errors import ConfigError
from search_space.geometry import validate_arch
from search_space.presets import default_task, get_backbone, preset_names
from search_space.space import SearchSpace, default_space


@pytest.fixture(scope="module")
def tiny_space(tiny, tiny_task) -> SearchSpace:
    return default_space(tiny, tiny_task)


def test_suggest_params_of_round_trip_fixed_trial(tiny_space):
    rng = np.random.default_rng(0)
    for _ in range(50):
        arch = tiny_space.sample(rng)
        params = tiny_space.params_of(arch)
        assert tiny_space.suggest(optuna.trial.FixedTrial(params)) == arch


def test_suggest_params_of_round_trip_real_study(tiny_space):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    rng = np.random.default_rng(1)
    wanted = [tiny_space.sample(rng) for _ in range(5)]
    for arch in wanted:
        study.enqueue_trial(tiny_space.params_of(arch))
    got = []
    for _ in range(len(wanted) + 5):
        trial = study.ask()
        arch = tiny_space.suggest(trial)
        got.append(arch)
        validate_arch(tiny_space.backbone, arch)
        assert tiny_space.contains(arch)
        study.tell(trial, 0.0)
    assert got[:len(wanted)] == wanted
    # parameter names are stable dotted paths
    assert set(study.trials[0].params) <= set(tiny_space.distributions())
    assert all("." in name for name in tiny_space.distributions())


def test_enumerate_matches_size_and_is_distinct(tiny, tiny_task):
    space = SearchSpace.from_dict(tiny, tiny_task, {"defaults": {"kinds": ["none", "conv1d", "attn1d"],
                                                                "heads": [2], "kernel_t": [3]}})
    archs = list(space.enumerate())
    assert len(archs) == space.size() == len({a.arch_id for a in archs})


def test_sample_is_in_space_and_valid(tiny_space):
    rng = np.random.default_rng(2)
    for _ in range(30):
        a = tiny_space.sample(rng)
        assert tiny_space.contains(a)
        validate_arch(tiny_space.backbone, a)


def test_snapgen_v_space_is_large():
    bb = get_backbone("snapgen_v")
    space = default_space(bb, default_task("snapgen_v"))
    assert len(space.stages) >= 7
    assert space.size() >= 10 ** 5


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_default_space_is_valid(name):
    space = default_space(get_backbone(name), default_task(name))
    assert space.size() > 1
    assert space.sample(np.random.default_rng(0)).backbone == name


@pytest.mark.parametrize("data, fragment", [
    ({"down9": {"kinds": ["none"]}}, "down9"),
    ({"down1": {"counts": [3]}}, "counts"),
    ({"down1": {"kinds": ["lstm"]}}, "unknown temporal kind"),
    ({"down1": {"heads": [3]}}, "heads"),
    ({"down1": {"colour": [1]}}, "unknown dimension"),
])
def test_bad_space_restrictions_are_config_errors(tiny, tiny_task, data, fragment):
    with pytest.raises(ConfigError, match=fragment):
        SearchSpace.from_dict(tiny, tiny_task, data)


def test_sample_distinct_is_deterministic_distinct_and_keeps_first():
    import numpy as np

    from search_space.presets import default_task, get_backbone
    from search_space.space import default_space

    b = get_backbone("tiny")
    space = default_space(b, default_task("tiny"))
    image = space.arch({})
    a = space.sample_distinct(12, seed=4, first=(image,))
    assert a[0] == image
    assert len({x.arch_id for x in a}) == 12
    assert [x.arch_id for x in a] == [x.arch_id for x in space.sample_distinct(12, 4, (image,))]
    # the same draws as uniform sampling from default_rng(seed), duplicates skipped
    rng = np.random.default_rng(4)
    first_draw = space.sample(rng)
    assert space.sample_distinct(1, 4)[0] == first_draw
