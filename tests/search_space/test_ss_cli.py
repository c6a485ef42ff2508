"""``temponas space``: JSON content and one-line errors with exit code 2 (run in-process)."""

from __future__ import annotations

import json

import pytest
from ss_helpers import K, mixed_arch

from experiments.cli import main
from search_space.arch import ArchConfig, StageChoice
from search_space.presets import default_task, get_backbone


def run(capsys, *argv):
    rc = main(["space", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_space_json_snapgen_v(capsys):
    rc, out, err = run(capsys, "--preset", "snapgen_v", "--json")
    assert rc == 0, err
    d = json.loads(out)
    assert d["size"] >= 10 ** 5 and len(d["stages"]) >= 7 == d["num_stages"]
    assert {"id", "height", "width", "channels", "kinds", "counts", "heads"} <= set(d["stages"][0])
    assert 0.33e9 <= d["backbone_params"] <= 0.35e9


@pytest.mark.parametrize("name, public", [("sd15", 859_520_964), ("sd21", 865_910_724)])
def test_space_json_reports_public_sd_counts(capsys, name, public):
    rc, out, _ = run(capsys, "--preset", name, "--json")
    assert rc == 0
    assert abs(json.loads(out)["backbone_params"] - public) / public < 0.01


def test_space_human_table(capsys):
    rc, out, _ = run(capsys, "--preset", "tiny")
    assert rc == 0
    assert "distinct architectures" in out and "down0" in out and "up1" in out


def test_arch_json_and_table(capsys, tmp_path, tiny, tiny_task):
    arch = mixed_arch(tiny, tiny_task)
    p = tmp_path / "arch.json"
    p.write_text(arch.to_json(indent=2))
    rc, out, err = run(capsys, "--arch", str(p), "--json")
    assert rc == 0, err
    d = json.loads(out)
    assert d["arch_id"] == arch.arch_id
    assert d["params"] == sum(b["params"] for b in d["blocks"])
    assert d["gflops"] == pytest.approx(sum(b["gflops"] for b in d["blocks"]))
    assert d["peak_activation_mb"] > 0 and d["memory_mb"] > d["peak_activation_mb"]
    assert any(b["op"] == "temporal:xattn3d" for b in d["blocks"])
    rc, out, _ = run(capsys, "--preset", "tiny", "--arch", str(p))
    assert rc == 0 and "stages.mid.temporal.0" in out and "GFLOPs" in out


def _arch_file(tmp_path, mutate=None, text=None):
    bb, task = get_backbone("snapgen_v"), default_task("snapgen_v")
    arch = ArchConfig.create(bb.name, task, {"down1": StageChoice(K.ATTN1D, 2, heads=8)}, bb.stage_ids)
    d = arch.to_dict()
    if mutate:
        mutate(d)
    p = tmp_path / "a.json"
    p.write_text(text if text is not None else json.dumps(d))
    return str(p)


@pytest.mark.parametrize("case, fragment", [
    ("bad_preset", "unknown preset 'nope'"),
    ("heads", "heads: 7 does not divide"),
    ("count", "count: 5 exceeds"),
    ("kind", "unknown temporal kind 'lstm'"),
    ("truncated", "not valid JSON"),
    ("missing_file", "cannot read"),
    ("not_object", "expected a JSON object"),
    ("preset_mismatch", "does not match --preset"),
    ("text_dim", "text_dim"),
])
def test_errors_are_one_line_and_exit_2(capsys, tmp_path, case, fragment):
    def set_stage(**c):
        return lambda d: d["stages"].update(down1=c)
    argv = {
        "bad_preset": lambda: ["--preset", "nope"],
        "heads": lambda: ["--arch", _arch_file(tmp_path, set_stage(kind="attn1d", count=1, heads=7))],
        "count": lambda: ["--arch", _arch_file(tmp_path, set_stage(kind="conv1d", count=5, kernel_t=3))],
        "kind": lambda: ["--arch", _arch_file(tmp_path, set_stage(kind="lstm", count=1))],
        "truncated": lambda: ["--arch", _arch_file(tmp_path, text='{"backbone": "snapgen_v", "ta')],
        "missing_file": lambda: ["--arch", str(tmp_path / "nope.json")],
        "not_object": lambda: ["--arch", _arch_file(tmp_path, text="[1, 2]")],
        "preset_mismatch": lambda: ["--preset", "sd15", "--arch", _arch_file(tmp_path)],
        "text_dim": lambda: ["--arch", _arch_file(tmp_path, lambda d: d["task"].update(text_dim=10))],
    }[case]()
    rc, out, err = run(capsys, *argv, "--json")
    assert rc == 2
    assert out == ""
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert fragment in err
    assert "Traceback" not in err
