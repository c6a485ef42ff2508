"""Contract test every registered latency predictor runs (Optuna-style shared test).

Fitting code is tested on SYNTHETIC measurements from a known roofline plus noise (see
``lat_helpers``): the truth is known, so accuracy assertions can fail.
"""

from __future__ import annotations

import inspect
import math
import subprocess
import sys

import numpy as np
import pytest
from lat_helpers import synthetic, tiny_space, true_network_ms, truth

from latency_models import (
    LatencyEstimate,
    LatencyModel,
    available,
    create_model,
    load_latency_model,
    profile_names,
)
from latency_models.probes import probes, random_archs

REQUIRED_META = {"device", "backend", "compute_units", "precision", "kind", "fitted_on", "heldout",
                 "predictor", "composition", "interval", "noise_floor_pct"}


@pytest.fixture(scope="module")
def data():
    return synthetic()


@pytest.fixture(scope="module", params=available())
def fitted(request, data):
    return create_model(request.param).fit(data)


def test_registry_lists_the_three_predictors():
    assert set(available()) == {"lut", "roofline", "regression"}


def protocol_members() -> dict[str, object]:
    """What :class:`LatencyModel` declares: annotated attributes, properties and methods."""
    out: dict[str, object] = dict.fromkeys(LatencyModel.__annotations__, None)
    out.update({k: v for k, v in vars(LatencyModel).items()
                if not k.startswith("_") and (callable(v) or isinstance(v, property))})
    return out


def assert_conforms(model) -> None:
    """``model`` has every member of the protocol, properties as properties, and methods that
    accept every parameter of the protocol's (same name, kind and default)."""
    assert isinstance(model, LatencyModel)
    members = protocol_members()
    assert {"predict", "predict_many", "predict_mean_ms", "fit", "save", "metadata", "name"} <= set(members)
    for name, want in members.items():
        got = inspect.getattr_static(type(model), name, None)
        if isinstance(want, property):
            assert isinstance(got, property), f"{type(model).__name__}.{name} is not a property"
            getattr(model, name)
        elif want is None:
            assert isinstance(getattr(model, name), str), name
        else:
            assert callable(got), name
            have = inspect.signature(getattr(type(model), name)).parameters
            for pname, p in inspect.signature(want).parameters.items():
                if p.kind is p.VAR_KEYWORD:
                    assert any(q.kind is q.VAR_KEYWORD for q in have.values()), f"{name}(**{pname})"
                    continue
                assert pname in have, f"{type(model).__name__}.{name} lacks parameter {pname!r}"
                q = have[pname]
                assert q.kind == p.kind and q.default == p.default, f"{name}({pname}): {q} vs {p}"
            extra = [q for k, q in have.items() if k not in inspect.signature(want).parameters
                     and q.default is q.empty and q.kind not in (q.VAR_POSITIONAL, q.VAR_KEYWORD)]
            assert not extra, f"{name} requires {extra}"


@pytest.mark.parametrize("name", available())
def test_every_registered_predictor_satisfies_the_protocol(name):
    assert_conforms(create_model(name))


@pytest.mark.parametrize("name", profile_names())
def test_every_shipped_profile_satisfies_the_protocol(name, tmp_path):
    m = load_latency_model(name)
    assert_conforms(m)
    space = tiny_space()
    archs = random_archs(space, 4, seed=3)
    assert m.prepare(space) == sum(1 for s in space.backbone.stage_ids for c in space.stage_choices(s) if c.count)
    means = m.predict_mean_ms(archs, space.backbone)
    assert means.shape == (4,) and np.all(means > 0)
    assert [e.mean_ms for e in m.predict_many(archs, space.backbone)] == pytest.approx(means.tolist())
    assert m.predict(archs[0], space.backbone).mean_ms == pytest.approx(means[0])
    sigs = [p.sig for p in probes(space)][:5]
    assert m.block_ms(sigs).shape == (5,) and np.all(m.block_ms(sigs) > 0)
    # shipped priors: identity composition (older) or the cost model's fitted one ("prior")
    assert m.metadata["kind"] == "prior" and m.composition.form in ("identity", "prior")
    m.set_metadata(note="contract")
    m.save(tmp_path)
    again = load_latency_model(tmp_path)
    assert again.metadata["note"] == "contract"
    np.testing.assert_allclose(again.predict_mean_ms(archs, space.backbone), means, rtol=1e-12)


def test_protocol_and_metadata(fitted, data):
    assert_conforms(fitted)
    meta = fitted.metadata
    assert REQUIRED_META <= set(meta)
    assert meta["kind"] == "calibrated" and meta["device"] == "synthetic-device"
    assert meta["fitted_on"]["blocks"] == len(data.block_latencies()[0])
    assert meta["heldout"]["network"]["n"] == len(data.network_latencies()[0])
    assert meta["noise_floor_pct"] is not None


def test_heldout_network_accuracy(fitted):
    acc = fitted.metadata["heldout"]["network"]
    assert acc["within_10pct"] >= 0.9, acc
    assert acc["spearman"] >= 0.9, acc


def test_predictions_match_truth_on_unseen_archs(fitted):
    space = tiny_space()
    t = truth()
    archs = random_archs(space, 40, seed=123)
    pred = fitted.predict_mean_ms(archs, space.backbone)
    true = np.array([true_network_ms(t, a, space.backbone) for a in archs])
    rel = np.abs(pred - true) / true
    assert np.mean(rel <= 0.10) >= 0.9, np.sort(rel)[-5:]


def test_composition_correction_is_fitted(fitted):
    c = fitted.composition
    assert c.fitted_on > 0 and c.form != "identity"
    assert 0.9 < c.alpha < 1.3


def test_composition_form_is_chosen_by_loo():
    from latency_models import fit_composition

    rng = np.random.default_rng(0)
    raw = rng.uniform(50, 200, 30)
    nt = rng.integers(0, 12, 30).astype(float)
    noise = np.exp(rng.normal(0, 0.005, 30))
    c = fit_composition(raw, (1.2 * raw + 5 + 3.0 * nt) * noise, nt)
    assert c.form == "affine+count" and c.gamma == pytest.approx(3.0, rel=0.1)
    c = fit_composition(raw, 0.8 * raw * noise, nt)
    assert c.form in ("ratio", "affine") and c.alpha == pytest.approx(0.8, rel=0.05)
    assert abs(c.gamma) < 0.05


def test_estimate_shape(fitted):
    space = tiny_space()
    archs = random_archs(space, 10, seed=5)
    many = fitted.predict_many(archs)
    means = fitted.predict_mean_ms(archs)
    for a, e, mm in zip(archs, many, means):
        single = fitted.predict(a, space.backbone)
        assert isinstance(single, LatencyEstimate)
        assert single.low_ms <= single.mean_ms <= single.high_ms
        assert single.mean_ms == pytest.approx(e.mean_ms) == pytest.approx(mm)
        assert math.isclose(sum(single.per_stage_ms.values()), single.mean_ms, rel_tol=1e-9)
        assert set(space.backbone.stage_ids) <= set(single.per_stage_ms)
        for sid, c in a.stages:
            if c.count:  # a stage with temporal blocks costs more than the image stage alone
                assert single.per_stage_ms[sid] > fitted.predict(space.arch({})).per_stage_ms[sid] * 0.999


def test_save_load_roundtrip_without_pickle(fitted, tmp_path):
    fitted.save(tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert set(files) <= {"model.json", "arrays.npz"}, files
    if "arrays.npz" in files:
        with np.load(tmp_path / "arrays.npz", allow_pickle=False) as z:
            assert all(z[k].dtype != object for k in z.files)
    loaded = load_latency_model(tmp_path)
    space = tiny_space()
    archs = random_archs(space, 15, seed=9)
    np.testing.assert_allclose(loaded.predict_mean_ms(archs), fitted.predict_mean_ms(archs), rtol=1e-12)
    assert loaded.metadata["heldout"] == fitted.metadata["heldout"]
    assert loaded.predict(archs[0]).low_ms == pytest.approx(fitted.predict(archs[0]).low_ms)


def test_loaded_model_is_torch_free(fitted, tmp_path):
    fitted.save(tmp_path)
    code = ("import sys; from latency_models import load_latency_model;"
            "from latency_models.probes import random_archs;"
            "from lat_helpers import tiny_space;"
            f"m = load_latency_model({str(tmp_path)!r});"
            "m.predict_many(random_archs(tiny_space(), 5));"
            "assert 'torch' not in sys.modules, 'torch imported'")
    here = __file__.rsplit("/", 1)[0]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=here)


def test_package_api_is_torch_free():
    code = ("import sys, latency_models, latency_models.backends as b;"
            "assert 'torch' not in sys.modules and 'coremltools' not in sys.modules;"
            "missing = [n for m in (latency_models, b) for n in m.__all__ if not hasattr(m, n)];"
            "assert not missing, missing")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_refuses_mixed_fit_sources(data):
    other = synthetic(device="another-device", n_networks=0)
    with pytest.raises(Exception, match="device"):
        data.merged(other)


def test_shared_choice_objects_across_stages(fitted):
    """One StageChoice object used in several stages is priced per stage (identity caches)."""
    from search_space.arch import ArchConfig, StageChoice, TemporalKind

    space = tiny_space()
    shared = StageChoice(TemporalKind.ATTN1D, 1, 2)
    ids = space.backbone.stage_ids
    a = ArchConfig(space.backbone.name, space.task, tuple((s, shared) for s in ids))
    b = ArchConfig(space.backbone.name, space.task,
                   tuple((s, StageChoice(TemporalKind.ATTN1D, 1, 2)) for s in ids))
    fitted.predict(ArchConfig(space.backbone.name, space.task, ((ids[0], shared),) +
                              tuple((s, StageChoice()) for s in ids[1:])))  # prime one stage
    ea, eb = fitted.predict(a), fitted.predict(b)
    assert ea.mean_ms == pytest.approx(eb.mean_ms)
    assert dict(ea.per_stage_ms) == pytest.approx(dict(eb.per_stage_ms))


def test_unknown_stage_is_a_clear_error(fitted):
    from search_space.arch import ArchConfig, StageChoice, TemporalKind
    from search_space.errors import TemponasError

    space = tiny_space()
    bad = ArchConfig(space.backbone.name, space.task,
                     (("down9", StageChoice(TemporalKind.CONV1D, 1, 0, 3)),))
    with pytest.raises(TemponasError, match="down9"):
        fitted.predict(bad)


def test_prepare_prices_the_whole_space_consistently(fitted, tmp_path):
    space = tiny_space()
    fitted.save(tmp_path)
    fresh = load_latency_model(tmp_path)
    n = fresh.prepare(space)
    assert n == sum(1 for s in space.backbone.stage_ids for c in space.stage_choices(s) if c.count)
    archs = random_archs(space, 20, seed=11)
    np.testing.assert_allclose(fresh.predict_mean_ms(archs), fitted.predict_mean_ms(archs), rtol=1e-12)
