"""Fidelity audit statistics and the ``temponas proxies`` CLI."""

from __future__ import annotations

import json
import math
import os

import pytest
from ev_helpers import TINY_TORCH

from common.stats import bootstrap_ci, kendall, spearman
from evaluators.audit import sample_archs
from experiments.cli import main
from search_space.presets import default_task, get_backbone
from search_space.space import default_space


def test_rank_statistics():
    x = [1, 2, 3, 4, 5, 6]
    assert kendall(x, x) == pytest.approx(1.0)
    assert kendall(x, x[::-1]) == pytest.approx(-1.0)
    assert spearman(x, [1, 3, 2, 4, 6, 5]) == pytest.approx(0.8857142857)
    assert math.isnan(kendall(x, [1] * 6))  # a constant proxy has no ranking
    lo, hi = bootstrap_ci(x, [2, 1, 3, 5, 4, 6], kendall, 200)
    assert -1 <= lo <= kendall(x, [2, 1, 3, 5, 4, 6]) <= hi <= 1


def test_sample_archs_distinct_and_deterministic():
    bb = get_backbone("snapgen_v")
    space = default_space(bb, default_task("snapgen_v"))
    a = sample_archs(space, 10, 3)
    assert len({x.arch_id for x in a}) == 10
    assert [x.arch_id for x in a] == [x.arch_id for x in sample_archs(space, 10, 3)]


def test_cli_list_json(capsys):
    assert main(["proxies", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} >= {"params", "naswot", "short_train"}
    assert sum(r["default_fast_proxy"] for r in rows) == 1


@pytest.mark.parametrize("argv, key", [
    (["proxies", "audit", "tiny", "--budgets", "a,b", "--out", "x"], "--budgets"),
    (["proxies", "audit", "tiny", "--seeds", "0", "--out", "x"], "--seeds"),
    (["proxies", "audit", "tiny", "--proxies", "params,bogus", "--out", "x"], "bogus"),
    (["proxies", "audit", "no_such_preset_or_file", "--out", "x"], "no_such_preset_or_file"),
    (["proxies", "preview-data", "--out", "x.jpg"], "--out"),
])
def test_cli_errors_exit_2_with_one_line(argv, key, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and key in err and "\n" not in err


def test_cli_audit_tiny(tmp_path, cache_dir, capsys):
    import yaml
    opts = tmp_path / "opts.yaml"
    opts.write_text(yaml.safe_dump({**TINY_TORCH, "cache_dir": cache_dir}))
    out = tmp_path / "audit"
    rc = main(["proxies", "audit", "tiny", "--n-archs", "4", "--budgets", "1,2", "--seeds", "2",
               "--proxies", "params,naswot", "--options", str(opts), "--out", str(out),
               "--bootstrap", "20"])
    assert rc == 0
    res = json.loads((out / "audit.json").read_text())
    assert res["n_archs"] == 4 and set(res["proxies"]) == {"params", "naswot"}
    assert "seed_kendall" in res and "budget_kendall" in res and res["improvement"]["image_only_val_loss"] > 0
    for f in ("audit.md", "archs.csv", "audit.png"):
        assert os.path.getsize(out / f) > 0
    assert "Proxies vs short training" in capsys.readouterr().out
