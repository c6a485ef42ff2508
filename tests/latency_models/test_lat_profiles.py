"""Shipped device profiles: loadable, torch-free, reproducible from the Apple fit set, with
their cross-family validation numbers in their metadata."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from latency_models import load_latency_model, profile_names
from latency_models.ane import fit, load_fitset
from latency_models.ane.priors import build_profile, probe_programs
from latency_models.apple_priors import sd21_image_arch
from latency_models.registry import ModelFileError
from search_space.presets import default_task, get_backbone
from search_space.space import default_space

FS = load_fitset()
EXPECTED = {d["profile"] for d in FS.devices.values() if d["profile"]}
VALIDATION_KEYS = {"families", "lofo_median_abs_pct", "lofo_p90_abs_pct", "within_family_spearman_min",
                   "interval_coverage_90", "lodo_median_abs_pct", "sd_excluded_median_abs_pct"}


def test_all_devices_shipped():
    assert EXPECTED <= set(profile_names())
    assert {"iphone16pm", "iphone14pm", "iphone15pro", "iphone12pro"} <= EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_profile_is_a_validated_prior_and_brackets_apple_sd21(name):
    m = load_latency_model(name)
    meta = m.metadata
    assert meta["kind"] == "prior" and meta["calibrated"] is False
    assert "PRIOR" in meta["provenance"] and meta["predictor"] == "roofline"
    assert VALIDATION_KEYS <= set(meta["validation"]) and meta["heldout"]["network"]["n"] >= 60
    est = m.predict(sd21_image_arch())
    assert est.low_ms < est.mean_ms < est.high_ms
    assert abs(sum(est.per_stage_ms.values()) - est.mean_ms) < 1e-6 * est.mean_ms
    published = meta["fitted_on"]["published_sd21_ms"]
    if published is not None:
        assert est.low_ms <= published <= est.high_ms
    if meta["fitted_on"]["rows_on_this_chip"] == 0:
        assert "NO published row" in meta["fitted_on"]["borrowed"] and "NO published row" in meta["provenance"]


def test_a_profile_rebuilds_identically_from_the_committed_fit_set():
    shipped = load_latency_model("iphone16pm")
    meta = shipped.metadata
    names, sigs = probe_programs(FS)
    rebuilt = build_profile(fit(FS), "iphone16pm", meta["validation"], meta["heldout"], sigs, names)
    assert rebuilt.constants == pytest.approx(shipped.constants, rel=1e-6)
    assert rebuilt.composition.alpha == pytest.approx(shipped.composition.alpha, rel=1e-6)
    assert rebuilt.composition.beta == pytest.approx(shipped.composition.beta, rel=1e-6)


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
