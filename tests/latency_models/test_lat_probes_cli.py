"""Probe set coverage, roofline few-shot calibration, and the fit/report/predict CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from lat_helpers import TRUE_CONSTANTS, synthetic, tiny_space

from experiments.cli import main
from latency_models import load_latency_model
from latency_models._roofline import RooflineModel
from latency_models.probes import probes, random_archs
from search_space.geometry import network_blocks
from search_space.presets import default_task, get_backbone
from search_space.space import default_space


@pytest.mark.parametrize("preset", ["tiny", "small", "sd21"])
def test_probes_cover_every_block_of_random_archs(preset):
    space = default_space(get_backbone(preset), default_task(preset))
    items = probes(space)
    sigs = {p.sig for p in items}
    assert len(sigs) == len(items)  # distinct
    for a in random_archs(space, 25, seed=1):
        for b in network_blocks(space.backbone, space.task, a):
            assert b.sig in sigs, b.path


def test_roofline_fewshot_from_prior_moves_toward_truth():
    """Prior = truth with every constant off by 2x; 8 network measurements recover most of it."""
    space = tiny_space()
    prior = RooflineModel(p=1.0)
    prior.set_constants({k: v * 2.0 for k, v in TRUE_CONSTANTS.items()})
    data = synthetic(noise=0.02, n_networks=8, repeats=1)
    few = data.subset(blocks=[])
    cal = RooflineModel.calibrating(prior).fit(few)
    archs = random_archs(space, 30, seed=77)
    from lat_helpers import true_network_ms, truth
    t = truth()
    true = np.array([true_network_ms(t, a, space.backbone) for a in archs])
    err_prior = np.median(np.abs(prior.predict_mean_ms(archs) - true) / true)
    err_cal = np.median(np.abs(cal.predict_mean_ms(archs) - true) / true)
    assert err_prior > 0.5 and err_cal < 0.15, (err_prior, err_cal)
    assert cal.composition.alpha == 1.0  # fitted on networks: no extra correction


def test_fit_report_predict_cli(tmp_path, capsys):
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    synthetic(seed=1).to_csv(train)
    synthetic(seed=2, n_networks=6).to_csv(test)
    assert main(["latency", "fit", str(train), "--predictor", "regression", "--out",
                 str(tmp_path / "model")]) == 0
    assert "held-out networks" in capsys.readouterr().out
    assert main(["latency", "report", str(tmp_path / "model"), str(test), "--out",
                 str(tmp_path / "rep")]) == 0
    rep = json.loads((tmp_path / "rep" / "latency_report.json").read_text())
    assert rep["network"]["within_10pct"] >= 0.8 and rep["block"]["n"] > 10
    assert (tmp_path / "rep" / "parity.png").stat().st_size > 10_000
    assert "residuals by block type" in capsys.readouterr().out
    assert main(["latency", "predict", "--device", str(tmp_path / "model"), "--preset", "tiny",
                 "--json"]) == 0
    pred = json.loads(capsys.readouterr().out)
    assert pred["low_ms"] <= pred["mean_ms"] <= pred["high_ms"]
    # few-shot calibration from a shipped profile through the CLI
    assert main(["latency", "fit", str(train), "--prior", "iphone16pm", "--out",
                 str(tmp_path / "cal")]) == 0
    assert load_latency_model(tmp_path / "cal").metadata["calibrated_from"] == "iphone16pm"


def test_predict_sd21_on_iphone14pm_brackets_apple(capsys):
    from latency_models.ane import load_fitset

    published = [r.latency_ms for r in load_fitset(need_features=False).included
                 if r.family == "sd21_unet" and r.device == "iphone14pm"]
    assert main(["latency", "predict", "--device", "iphone14pm", "--preset", "sd21", "--frames", "1",
                 "--batch", "2", "--json"]) == 0
    pred = json.loads(capsys.readouterr().out)
    assert len(published) == 1 and pred["low_ms"] <= published[0] <= pred["high_ms"]
    assert abs(pred["mean_ms"] / published[0] - 1) <= 0.35


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["latency", "predict", "--device", "nokia3310", "--preset", "sd21"]) == 2
    assert main(["latency", "fit", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(e.startswith("error: ") for e in err)


def test_probes_cli_json(capsys):
    assert main(["latency", "probes", "--preset", "tiny", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == len(probes(tiny_space())) and {"probe_id", "op", "stages"} <= set(rows[0])
    assert main(["latency", "probes", "--preset", "tiny", "--json", "--calibration", "7"]) == 0
    with_cal = json.loads(capsys.readouterr().out)
    assert len(with_cal) == len(rows) + 7 and with_cal[: len(rows)] == rows
    assert len({r["probe_id"] for r in with_cal}) == len(with_cal)
    assert main(["latency", "probes", "--preset", "tiny", "--calibration", "-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--calibration" in err
