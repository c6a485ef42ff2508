"""The Apple fit set (data + committed features) and the Neural Engine cost model on a subset."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil

import numpy as np
import pytest

from latency_models.ane import fit, load_fitset
from latency_models.ane.costmodel import Hyper, _Units, new_row
from latency_models.ane.fitset import DATA_DIR
from latency_models.ane.recipes import load_recipes
from latency_models.ane.validate import hold_out, per_family
from search_space.errors import ConfigError

SUBSET = {"mobileone", "fastvit", "resnet50", "mobilenet_v2", "efficientformer"}


@pytest.fixture(scope="module")
def fs():
    return load_fitset()


def test_every_published_number_is_a_row_with_a_source_or_a_reason(fs):
    assert len(fs.rows) >= 90 and len(fs.included) >= 70
    assert len(fs.families()) >= 10
    for r in fs.rows:
        assert fs.sources[r.source]["url"].startswith("https://")
        assert r.include or len(r.reason) > 20
    # duplicates of one measurement enter the fit once
    keys = [(r.model, r.device, r.precision, r.source, r.latency_ms) for r in fs.included]
    assert len(keys) == len(set(keys))


def test_committed_features_match_recipes_and_their_hashes(fs):
    recipes = load_recipes()
    types: dict[str, list[str]] = {}
    with open(DATA_DIR / "ops.csv", newline="") as f:
        for r in csv.DictReader(f):
            types.setdefault(r["program"], []).append(r["op_type"])
    need = {r.program for r in fs.included}
    assert need <= set(fs.programs)
    for name, prog in fs.programs.items():
        model = prog.meta["model"]
        rec = recipes["temponas_probes"] if name.startswith("probe:") else recipes[model]
        assert prog.meta["recipe_sha256"] == rec.sha256, f"{name}: recipe changed, re-run make fitset-features"
        rows = sorted([int(c), float(f), float(a), float(w), int(b), t, int(n)] for c, f, a, w, b, t, n in
                      zip(prog.cls, prog.flops, prog.act, prog.weights, prog.weight_bits,
                          types[name], prog.count))
        assert hashlib.sha256(json.dumps(rows).encode()).hexdigest() == prog.meta["ops_sha256"], name


def test_published_parameter_counts_are_reproduced(fs):
    """The networks are the published ones: MIL weight counts match the papers' parameters."""
    checked = 0
    for prog in fs.programs.values():
        pub = prog.meta.get("published_params_m")
        if pub:
            got = float(prog.meta["weight_melem"])
            assert abs(got / float(pub) - 1) < 0.02, (prog.name, got, pub)
            checked += 1
    assert checked >= 8


def test_bad_rows_are_one_line_errors(tmp_path):
    for f in DATA_DIR.iterdir():
        if f.suffix in (".csv", ".json"):
            shutil.copy(f, tmp_path / f.name)
    text = (tmp_path / "measurements.csv").read_text()
    (tmp_path / "measurements.csv").write_text(text.replace(",iphone12pro,", ",iphone99,", 1))
    with pytest.raises(ConfigError, match=r"measurements.csv:\d+: device 'iphone99'"):
        load_fitset(tmp_path)
    (tmp_path / "measurements.csv").write_text(text.replace(",0.79,", ",-1,", 1))
    with pytest.raises(ConfigError, match="latency_ms"):
        load_fitset(tmp_path)


@pytest.fixture(scope="module")
def small(fs):
    sub = fs.subset(lambda r: r.family in SUBSET)
    return sub, fit(sub, h=Hyper(em_steps=2))


def test_analytic_jacobian(small):
    sub, m = small
    u = _Units(sub, sub.included, m.par)
    mu, jac = u.log_pred(m.theta, jac=True)
    num = np.empty_like(jac)
    for j in range(len(m.theta)):
        th = m.theta.copy()
        th[j] += 1e-6
        num[:, j] = (u.log_pred(th) - mu) / 1e-6
    assert np.abs(jac - num).max() < 1e-4


def test_fit_on_a_subset_and_held_out_families(small):
    sub, m = small
    pred = m.predict(sub.included)
    err = np.abs(np.log(pred["mean_ms"] / [r.latency_ms for r in sub.included]))
    assert np.median(err) < 0.15
    held = hold_out(sub, lambda r: r.family, Hyper(em_steps=2))
    fam = per_family(held)
    assert set(fam) == SUBSET
    assert fam["mobileone"]["spearman"] > 0.8 and fam["fastvit"]["spearman"] > 0.8
    assert np.median(held.abs_pct) < 60


def test_unseen_family_source_and_generation_widen_the_interval(small):
    sub, m = small
    seen = next(r for r in sub.included
                if r.model == "tv_resnet50" and r.chip == "A16" and r.precision == "fp16")
    new = new_row("tv_resnet50@fp16", "A16")
    a18 = new_row("tv_resnet50@fp16", "A18 Pro")
    sd = m.predict([seen, new, a18])["log_sd"]
    assert sd[0] < sd[1] < sd[2]
    assert math.isfinite(m.predict([a18])["mean_ms"][0])


def test_cli_fitset_and_devices_show_the_priors_evidence(capsys):
    from experiments.cli import main

    assert main(["latency", "fitset", "--excluded", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and all(not r["include"] and r["reason"] and r["url"].startswith("https://") for r in rows)
    assert main(["latency", "devices"]) == 0
    out = capsys.readouterr().out
    assert "cost model: LOFO median |err|" in out and "iphone16pm" in out and "(borrowed)" in out
