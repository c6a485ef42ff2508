"""Shipped device profiles: loadable, torch-free, reproducible from their published sources."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from latency_models import load_latency_model, profile_names
from latency_models.apple_priors import DEVICES, build_profiles, sd21_image_arch
from latency_models.registry import ModelFileError
from search_space.presets import default_task, get_backbone
from search_space.space import default_space

EXPECTED = {d.key for d in DEVICES}


def test_all_devices_shipped():
    assert EXPECTED <= set(profile_names())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_profile_reproduces_its_published_number(name):
    m = load_latency_model(name)
    meta = m.metadata
    assert meta["kind"] == "prior" and meta["calibrated"] is False
    assert "provenance" in meta and "PRIOR" in meta["provenance"]
    est = m.predict(sd21_image_arch())
    assert est.low_ms < est.mean_ms < est.high_ms
    assert abs(sum(est.per_stage_ms.values()) - est.mean_ms) < 1e-6 * est.mean_ms
    published = meta["fitted_on"].get("published_ms")
    if published is None:
        assert name == "iphone16pm" and "UNCALIBRATED" in meta["provenance"]
    else:
        assert abs(est.mean_ms - published) <= 0.10 * published


def test_profiles_rebuild_identically(tmp_path):
    build_profiles(tmp_path)
    for d in DEVICES:
        shipped = load_latency_model(d.key)
        rebuilt = load_latency_model(str(tmp_path / f"{d.key}.json"))
        assert rebuilt.constants == pytest.approx(shipped.constants, rel=1e-9)


def test_video_archs_cost_more_and_temporal_blocks_add_up():
    m = load_latency_model("iphone16pm")
    bb = get_backbone("sd21")
    space = default_space(bb, default_task("sd21"))
    rng = np.random.default_rng(0)
    archs = [space.sample(rng) for _ in range(50)]
    many = m.predict_many(archs, bb)
    means = m.predict_mean_ms(archs, bb)
    for a, e, mm in zip(archs, many, means):
        single = m.predict(a)
        assert single.mean_ms == pytest.approx(e.mean_ms) == pytest.approx(mm)
        assert single.per_stage_ms == pytest.approx(dict(e.per_stage_ms))
    empty = space.arch({})
    assert all(e.mean_ms > m.predict(empty).mean_ms for a, e in zip(archs, many) if a.num_temporal_blocks)


def test_predictor_import_is_torch_free():
    code = ("import sys; from latency_models import load_latency_model;"
            "from latency_models.apple_priors import sd21_image_arch;"
            "load_latency_model('iphone14pm').predict(sd21_image_arch());"
            "assert 'torch' not in sys.modules and 'coremltools' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bad_specs_are_one_line_errors(tmp_path):
    with pytest.raises(ModelFileError, match="not a shipped device profile"):
        load_latency_model("no_such_phone")
    bad = tmp_path / "m.json"
    bad.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ModelFileError, match="format"):
        load_latency_model(str(bad))
    (tmp_path / "d").mkdir()
    with pytest.raises(ModelFileError, match="no model.json"):
        load_latency_model(str(tmp_path / "d"))
