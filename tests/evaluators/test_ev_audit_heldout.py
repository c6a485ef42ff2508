"""Held-out audit: choose a proxy on one sample of architectures, report on another."""

from __future__ import annotations

import json

import pytest
import yaml
from ev_helpers import TINY_TORCH

from evaluators.audit_heldout import SearchBudget, heldout_summary
from experiments.cli import main


def _audit(n_archs: int, taus: dict, cost: dict) -> dict:
    return {"n_archs": n_archs, "proxies": {
        n: {"vs_short_train": {"kendall": t, "kendall_ci": [t - 0.2, t + 0.2]},
            "cpu_s_per_arch": cost[n][0], "s_per_arch": cost[n][0],
            **({"one_time": {"cpu_s": cost[n][1], "wall_time_s": cost[n][1]}} if cost[n][1] else {})}
        for n, t in taus.items()}}


def test_choice_is_made_on_the_choose_sample_within_the_budget():
    cost = {"params": (0.0, 0), "naswot": (0.2, 0), "slow": (5.0, 0), "supernet": (0.8, 300)}
    choose = _audit(24, {"params": -0.3, "naswot": 0.45, "slow": 0.9, "supernet": 0.7}, cost)
    report = _audit(24, {"params": 0.1, "naswot": 0.2, "slow": 0.95, "supernet": 0.65}, cost)
    h = heldout_summary(choose, report, 0, 1, SearchBudget(seconds=600, n_trials=400, workers=2))
    assert h["proxies"]["slow"]["search_cost_s"] == pytest.approx(1000.0)
    assert not h["proxies"]["slow"]["within_budget"]  # 400 * 5 / 2 s
    assert h["proxies"]["supernet"]["search_cost_s"] == pytest.approx(300 + 160)
    assert h["chosen"] == "supernet" and h["chosen_report_kendall"] == 0.65
    assert h["best_on_report"] == "supernet" and h["choice_holds"]
    # the report sample never decides: a proxy that wins only there is not chosen
    report2 = _audit(24, {"params": 0.1, "naswot": 0.8, "slow": 0.95, "supernet": 0.3}, cost)
    h2 = heldout_summary(choose, report2, 0, 1, SearchBudget(seconds=600))
    assert h2["chosen"] == "supernet" and h2["best_on_report"] == "naswot"
    assert not h2["choice_holds"]
    assert heldout_summary(choose, report, 0, 1)["chosen"] == "slow"  # no budget


def test_cli_audit_choose_and_report_samples(tmp_path, cache_dir, capsys):
    opts = tmp_path / "opts.yaml"
    opts.write_text(yaml.safe_dump({**TINY_TORCH, "cache_dir": cache_dir}))
    out = tmp_path / "audit"
    argv = ["proxies", "audit", "tiny", "--n-archs", "4", "--budgets", "1", "--seeds", "1",
            "--proxies", "params,naswot", "--options", str(opts), "--out", str(out),
            "--bootstrap", "20", "--choose-sample-seed", "0"]
    assert main([*argv, "--report-sample-seed", "1"]) == 0
    h = json.loads((out / "heldout.json").read_text())
    assert (h["choose_sample_seed"], h["report_sample_seed"], h["n_archs"]) == (0, 1, [4, 4])
    assert set(h["proxies"]) == {"params", "naswot"} and h["chosen"] in h["proxies"]
    assert (out / "heldout.png").stat().st_size > 0 and (out / "heldout.md").stat().st_size > 0
    for part in ("choose", "report"):
        assert json.loads((out / part / "audit.json").read_text())["n_archs"] == 4
    a = json.loads((out / "choose" / "audit.json").read_text())["per_arch"]
    b = json.loads((out / "report" / "audit.json").read_text())["per_arch"]
    assert not {r["arch_id"] for r in a} & {r["arch_id"] for r in b}  # two different samples
    assert "Held-out proxy audit" in capsys.readouterr().out
    assert main([*argv, "--report-sample-seed", "0"]) == 2  # the same sample is not held out
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --report-sample-seed") and "\n" not in err
