"""Bad input through the real CLI entry point: each case must give ONE line ``error: ...`` that
names the file/key/row/column, exit code 2, no traceback, and leave nothing half-written."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml
from rel_helpers import cli, faulty, one_line_error, smoke_dict, write_config

pytestmark = pytest.mark.timeout(60)

OUT = "out"  # every case's would-be output location, relative to its tmp dir


# ---- inputs to damage -----------------------------------------------------------------------

def _valid_arch(tmp: Path) -> Path:
    from search_space.arch import ArchConfig, StageChoice
    from search_space.presets import default_task, get_backbone

    bb = get_backbone("tiny")
    arch = ArchConfig.create("tiny", default_task("tiny"),
                             {bb.stage_ids[0]: StageChoice("conv1d", 1, 0, 3, 0)}, bb.stage_ids)
    p = tmp / "arch.json"
    p.write_text(json.dumps({**arch.to_dict(), "arch_id": arch.arch_id}, indent=2))
    return p


def valid_measurement_csv(tmp: Path) -> Path:
    """A well-formed measurement file of the tiny space's block probes (values are inputs for
    the parser, not measurements)."""
    from latency_models.measurements import BlockRow, DeviceInfo, Measurements
    from latency_models.probes import probes
    from search_space.presets import default_task, get_backbone
    from search_space.space import default_space

    space = default_space(get_backbone("tiny"), default_task("tiny"))
    sigs = [p.sig for p in probes(space)][:6]
    m = Measurements(DeviceInfo("test-device", "torch-cpu", "cpu", "fp32"),
                     [BlockRow(s, 1.0 + 0.5 * i, runs=5) for i, s in enumerate(sigs)])
    p = tmp / "meas.csv"
    m.to_csv(p)
    return p


def _csv_edit(tmp: Path, fn) -> Path:
    import csv

    p = valid_measurement_csv(tmp)
    with open(p, newline="") as f:
        rows = list(csv.reader(f))
    rows = fn(rows)
    with open(p, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return p


def _set_col(col: str, value: str, row: int = 2):
    def fn(rows):
        rows[row - 1][rows[0].index(col)] = value
        return rows
    return fn


def _drop_col(col: str):
    def fn(rows):
        i = rows[0].index(col)
        return [r[:i] + r[i + 1:] for r in rows]
    return fn


def _dup_row(rows):
    return rows + [list(rows[1])]


def _cfg(tmp: Path, **over) -> Path:
    return write_config(tmp / "cfg.yaml", **over)


def _raw(tmp: Path, text: str | bytes, name: str = "cfg.yaml") -> Path:
    p = tmp / name
    (p.write_bytes if isinstance(text, bytes) else p.write_text)(text)
    return p


def _search(cfg: Path, tmp: Path, *extra: str) -> list[str]:
    return ["search", str(cfg), "--out", str(tmp / OUT), "--no-progress", *extra]


# ---- a finished run to damage (one short real search) ---------------------------------------

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, rel_ray):
    d = tmp_path_factory.mktemp("bad_input_run")
    cfg = write_config(d / "cfg.yaml", evaluator=faulty(d / "script"), search={"n_trials": 4})
    rc, out, err = cli("search", str(cfg), "--out", str(d / "run"), "--no-progress")
    assert rc == 0, err
    return cfg, d / "run"


def _run_copy(finished_run, tmp: Path, damage=None) -> tuple[Path, Path]:
    cfg, run = finished_run
    dst = tmp / OUT
    shutil.copytree(run, dst)
    if damage:
        damage(dst)
    return cfg, dst


def _rewrite_json(rel: str, **over):
    def fn(run: Path):
        p = run / rel
        p.write_text(json.dumps({**json.loads(p.read_text()), **over}))
    return fn


def _write(rel: str, data: bytes):
    def fn(run: Path):
        (run / rel).write_bytes(data)
    return fn


def _garble_journal_middle(run: Path):
    p = run / "study.journal"
    lines = p.read_bytes().splitlines(keepends=True)
    lines[len(lines) // 2] = b'{"op_code": 4, "trial_id": \n'
    p.write_bytes(b"".join(lines))


def _binary_journal(run: Path):
    p = run / "study.journal"
    b = p.read_bytes()
    p.write_bytes(b[:200] + b"\x00\xff\xfe binary junk\n" + b[200:])


# ---- the table --------------------------------------------------------------------------------
# id: (category, what the input is, builder(tmp, finished_run) -> argv, expected fragments)

def _cases():
    S = lambda tmp, **o: _search(_cfg(tmp, **o), tmp)
    return {
        # experiment configs
        "yaml_malformed": ("config", "malformed YAML (unclosed flow mapping)",
                           lambda t, r: _search(_raw(t, "name: smoke\nbackbone: tiny\nsearch: {n_trials: 3\n"), t),
                           ["cfg.yaml", "malformed YAML at line"]),
        "yaml_not_mapping": ("config", "YAML top level is a list",
                             lambda t, r: _search(_raw(t, "- name\n- smoke\n"), t),
                             ["cfg.yaml", "expected a mapping"]),
        "yaml_empty": ("config", "empty config file",
                       lambda t, r: _search(_raw(t, ""), t), ["cfg.yaml", "name", "missing"]),
        "yaml_not_utf8": ("config", "config file is not UTF-8 text",
                          lambda t, r: _search(_raw(t, b"name: \xff\xfe\x00smoke\n"), t),
                          ["cfg.yaml", "UTF-8"]),
        "config_missing": ("config", "config file does not exist",
                           lambda t, r: _search(t / "nope.yaml", t), ["nope.yaml", "no such config file"]),
        "config_is_dir": ("config", "config path is a directory",
                          lambda t, r: _search(t, t), ["is a directory"]),
        "unknown_top_key": ("config", "unknown top-level key `trials`",
                            lambda t, r: S(t, trials=5), ["cfg.yaml", "trials: unknown key"]),
        "unknown_nested_key": ("config", "misspelt key `search.n_trial`",
                               lambda t, r: S(t, search={"n_trial": 5}), ["cfg.yaml", "search.n_trial: unknown key"]),
        "wrong_type_int": ("config", "`search.n_trials: ten`",
                           lambda t, r: S(t, search={"n_trials": "ten"}), ["cfg.yaml", "search.n_trials", "integer"]),
        "wrong_type_float": ("config", "`constraints.latency_budget_ms: fast`",
                             lambda t, r: S(t, constraints={"latency_budget_ms": "fast"}),
                             ["cfg.yaml", "constraints.latency_budget_ms", "number"]),
        "range_workers": ("config", "`search.workers: 0`",
                          lambda t, r: S(t, search={"workers": 0}), ["cfg.yaml", "search.workers", ">= 1"]),
        "range_timeout": ("config", "`evaluator.timeout_s: -5`",
                          lambda t, r: S(t, evaluator={"timeout_s": -5}), ["cfg.yaml", "evaluator.timeout_s"]),
        "nan_budget": ("config", "`constraints.memory_budget_mb: .nan`",
                       lambda t, r: _search(_raw(t, yaml.safe_dump(smoke_dict()).replace(
                           "memory_budget_mb: 8", "memory_budget_mb: .nan")), t),
                       ["cfg.yaml", "constraints.memory_budget_mb", "finite"]),
        "bad_sampler": ("config", "unknown sampler `annealing`",
                        lambda t, r: S(t, search={"sampler": "annealing"}), ["cfg.yaml", "search.sampler", "nsga2"]),
        "bad_sampler_option": ("config", "sampler option nsga2 does not have",
                               lambda t, r: S(t, search={"sampler_options": {"pop": 3}}),
                               ["cfg.yaml", "search.sampler_options.pop"]),
        "no_quality_objective": ("config", "objectives without `quality`",
                                 lambda t, r: S(t, objectives=["latency_ms", "memory_mb"]),
                                 ["cfg.yaml", "objectives", "quality"]),
        "unknown_backbone": ("config", "unknown backbone preset `sdxl9`",
                             lambda t, r: S(t, backbone="sdxl9"), ["cfg.yaml", "backbone", "sdxl9"]),
        "config_version": ("config", "config written for a newer temponas (`config_version: 99`)",
                           lambda t, r: S(t, config_version=99), ["cfg.yaml", "config_version", "99"]),
        "bad_storage_url": ("config", "`search.storage: results.db` (not a URL)",
                            lambda t, r: S(t, search={"storage": "results.db"}), ["search.storage", "results.db"]),
        "unknown_evaluator": ("config", "unknown evaluator name",
                              lambda t, r: S(t, evaluator={"name": "vbench9"}), ["cfg.yaml", "evaluator", "vbench9"]),
        "plugin_not_importable": ("config", "`module:Class` evaluator whose module does not exist",
                                  lambda t, r: S(t, evaluator={"name": "no_such_mod:Eval"}),
                                  ["cfg.yaml", "evaluator", "no_such_mod"]),
        "evaluator_bad_option": ("config", "unknown evaluator option",
                                 lambda t, r: S(t, evaluator={"options": {"bogus": 1}}),
                                 ["cfg.yaml", "evaluator.options", "bogus"]),
        "unknown_device": ("config", "unknown latency device profile",
                           lambda t, r: S(t, latency_model="iphone99"), ["cfg.yaml", "latency_model", "iphone99"]),
        "ray_address_unreachable": ("config", "`--ray-address` where no Ray cluster listens",
                                    lambda t, r: _search(_cfg(t), t, "--ray-address", "127.0.0.1:1"),
                                    ["--ray-address 127.0.0.1:1", "nothing answers"]),
        # resources no node of the (shared, local, 2-CPU, GPU-less) Ray can ever grant
        "resources_no_gpu": ("resources", "`evaluator.options.resources: {num_gpus: 1}` on a Ray "
                             "without GPUs",
                             lambda t, r: S(t, evaluator={"options": {"resources": {"num_gpus": 1}}}),
                             ["cfg.yaml", "evaluator.options.resources.num_gpus", "has a GPU"]),
        "resources_custom": ("resources", "a custom resource no node has",
                             lambda t, r: S(t, evaluator={"options": {"resources": {"tpu_pod": 1}}}),
                             ["cfg.yaml", "evaluator.options.resources.tpu_pod", "no node"]),
        "resources_too_many_cpus": ("resources", "more CPUs per evaluation than the largest node",
                                    lambda t, r: S(t, evaluator={"options": {"resources": {"num_cpus": 64}}}),
                                    ["cfg.yaml", "evaluator.options.resources.num_cpus",
                                     "largest node", "has 2 CPUs"]),
        "device_cuda_without_gpu": ("resources", "`device: cuda` for a torch evaluator on a Ray "
                                    "without GPUs",
                                    lambda t, r: S(t, evaluator={"name": "naswot",
                                                                 "options": {"device": "cuda"}}),
                                    ["cfg.yaml", "evaluator.options.device", "GPU"]),
        "device_unknown": ("config", "`device: gpu0`",
                           lambda t, r: S(t, evaluator={"name": "naswot", "options": {"device": "gpu0"}}),
                           ["cfg.yaml", "evaluator.options.device", "gpu0"]),
        "runtime_env_missing_dir": ("config", "`runtime_env.working_dir` that does not exist",
                                    lambda t, r: S(t, runtime_env={"working_dir": str(t / "nope")}),
                                    ["cfg.yaml", "runtime_env.working_dir", "no such directory"]),
        "runtime_env_unknown_key": ("config", "`runtime_env.pip` (not supported)",
                                    lambda t, r: S(t, runtime_env={"pip": ["torch"]}),
                                    ["cfg.yaml", "runtime_env.pip", "unknown key"]),
        "runtime_env_env_var_list": ("config", "`runtime_env.env_vars.X: [1]`",
                                     lambda t, r: S(t, runtime_env={"env_vars": {"X": [1]}}),
                                     ["cfg.yaml", "runtime_env.env_vars.X", "string"]),
        "out_is_a_file": ("config", "`--out` names an existing file",
                          lambda t, r: _search(_cfg(t), t) if _raw(t, "not a dir", OUT) else [],
                          ["out", "is not a directory"]),
        "cli_n_trials_zero": ("config", "`--n-trials 0` on the command line",
                              lambda t, r: _search(_cfg(t), t, "--n-trials", "0"), ["--n-trials", ">= 1"]),
        # search spaces
        "space_unknown_kind": ("search space", "temporal kind `warp` in space.defaults.kinds",
                               lambda t, r: S(t, space={"defaults": {"kinds": ["none", "warp"]}}),
                               ["cfg.yaml", "space.defaults.kinds", "warp"]),
        "space_count_range": ("search space", "space.down0.counts: [99] beyond the stage's units",
                              lambda t, r: S(t, space={"down0": {"counts": [99]}}),
                              ["cfg.yaml", "space.down0.counts", "99"]),
        "space_unknown_stage": ("search space", "space.down7 (the backbone has no such stage)",
                                lambda t, r: S(t, space={"down7": {"kinds": ["none"]}}),
                                ["cfg.yaml", "space.down7", "unknown stage"]),
        "space_text_dim": ("search space", "task.text_dim disagrees with the backbone's cross-attention",
                           lambda t, r: S(t, task={"text_dim": 7}), ["cfg.yaml", ": task.text_dim"]),
        "space_empty_list": ("search space", "space.defaults.heads: [] (nothing allowed)",
                             lambda t, r: S(t, space={"defaults": {"heads": []}}),
                             ["cfg.yaml", "space.defaults.heads"]),
        # architecture JSON
        "arch_truncated": ("arch JSON", "arch file cut in half",
                           lambda t, r: _arch_cmd(t, lambda s: s[: len(s) // 2]),
                           ["arch.json", "not valid JSON", "line"]),
        "arch_hand_edited": ("arch JSON", "count edited by hand, arch_id left as it was",
                             lambda t, r: _arch_cmd(t, lambda s: s.replace('"count": 1', '"count": 2', 1)),
                             ["arch.json", "arch_id", "does not match"]),
        "arch_unknown_kind": ("arch JSON", "stage kind `conv9d`",
                              lambda t, r: _arch_cmd(t, lambda s: _strip_id(s).replace('"conv1d"', '"conv9d"', 1)),
                              ["arch.json", "kind", "conv9d"]),
        "arch_negative_count": ("arch JSON", "stage count -1",
                                lambda t, r: _arch_cmd(t, lambda s: _strip_id(s).replace('"count": 1', '"count": -1', 1)),
                                ["arch.json", "count", ">= 0"]),
        "arch_future_schema": ("arch JSON", "schema_version 99 (newer temponas)",
                               lambda t, r: _arch_cmd(t, lambda s: s.replace('"schema_version": 1', '"schema_version": 99')),
                               ["arch.json", "schema_version"]),
        "arch_wrong_stage": ("arch JSON", "a stage the backbone does not have",
                             lambda t, r: _arch_cmd(t, lambda s: _rename_stage(s)),
                             ["arch.json"]),
        "arch_missing": ("arch JSON", "arch file does not exist",
                         lambda t, r: ["space", "--arch", str(t / "missing.json")], ["missing.json", "cannot read"]),
        # measurement CSVs
        "csv_missing_column": ("measurement CSV", "column latency_ms removed",
                               lambda t, r: _fit(t, _csv_edit(t, _drop_col("latency_ms"))),
                               ["meas.csv", "missing column 'latency_ms'"]),
        "csv_nan_latency": ("measurement CSV", "latency_ms = nan on line 3",
                            lambda t, r: _fit(t, _csv_edit(t, _set_col("latency_ms", "nan", 3))),
                            ["meas.csv", "line 3", "column latency_ms", "finite"]),
        "csv_negative_latency": ("measurement CSV", "latency_ms = -2.5 on line 2",
                                 lambda t, r: _fit(t, _csv_edit(t, _set_col("latency_ms", "-2.5"))),
                                 ["meas.csv", "line 2", "column latency_ms", "> 0"]),
        "csv_not_a_number": ("measurement CSV", "latency_ms = `fast` on line 4",
                             lambda t, r: _fit(t, _csv_edit(t, _set_col("latency_ms", "fast", 4))),
                             ["meas.csv", "line 4", "column latency_ms", "not a number"]),
        "csv_duplicate_signature": ("measurement CSV", "the same block signature and repeat twice",
                                    lambda t, r: _fit(t, _csv_edit(t, _dup_row)),
                                    ["meas.csv", "line 8", "duplicate signature", "line 2"]),
        "csv_mixed_devices": ("measurement CSV", "line 5 measured on another device",
                              lambda t, r: _fit(t, _csv_edit(t, _set_col("device", "iPhone15,3", 5))),
                              ["meas.csv", "line 5", "column device"]),
        "csv_bad_signature_field": ("measurement CSV", "block signature field `in_channels` = `wide`",
                                    lambda t, r: _fit(t, _csv_edit(t, _set_col("in_channels", "wide", 3))),
                                    ["meas.csv", "line 3", "in_channels"]),
        "csv_not_utf8": ("measurement CSV", "CSV saved as UTF-16 by a spreadsheet",
                         lambda t, r: _fit(t, _utf16(valid_measurement_csv(t))),
                         ["meas.csv", "not UTF-8"]),
        "csv_header_only": ("measurement CSV", "header without rows",
                            lambda t, r: _fit(t, _csv_edit(t, lambda rows: rows[:1])),
                            ["meas.csv", "no measurement rows"]),
        "csv_missing_file": ("measurement CSV", "measurement file does not exist",
                             lambda t, r: _fit(t, t / "nope.csv"), ["nope.csv", "cannot read"]),
        # run directories and storages
        "journal_corrupt_line": ("run dir", "a journal line in the middle made invalid JSON",
                                 lambda t, r: ["pareto", str(_run_copy(r, t, _garble_journal_middle)[1])],
                                 ["study.journal", "cannot open the study storage"]),
        "journal_binary_junk": ("run dir", "binary junk inside the journal",
                                lambda t, r: ["pareto", str(_run_copy(r, t, _binary_journal)[1])],
                                ["study.journal", "cannot open the study storage"]),
        "journal_corrupt_resume": ("run dir", "`search --resume` on a run whose journal is corrupt",
                                   lambda t, r: _search(r[0], t, "--resume") if _run_copy(r, t, _garble_journal_middle) else [],
                                   ["study.journal", "cannot open the study storage"]),
        "journal_empty": ("run dir", "journal emptied (study gone)",
                          lambda t, r: ["pareto", str(_run_copy(r, t, _write("study.journal", b""))[1])],
                          ["no study 'smoke'"]),
        "sqlite_corrupt": ("run dir", "SQLite storage file that is not a database",
                           lambda t, r: _search(_cfg(t, search={"storage": f"sqlite:///{_raw(t, 'junk', 'study.db')}"}), t),
                           ["study.db", "cannot open the study storage", "not a database"]),
        "run_incompatible_version": ("run dir", "run.json written by an incompatible temponas (format 99)",
                                     lambda t, r: ["pareto", str(_run_copy(r, t, _rewrite_json("run.json", format_version=99))[1])],
                                     ["run.json", "incompatible temponas"]),
        "run_incompatible_resume": ("run dir", "`search --resume` on a run of format 99",
                                    lambda t, r: _search(r[0], t, "--resume") if _run_copy(r, t, _rewrite_json("run.json", format_version=99)) else [],
                                    ["run.json", "incompatible temponas"]),
        "run_json_corrupt": ("run dir", "run.json truncated",
                             lambda t, r: ["pareto", str(_run_copy(r, t, _write("run.json", b'{"format_ver'))[1])],
                             ["run.json", "corrupt"]),
        "run_config_deleted": ("run dir", "the run's config.yaml deleted",
                               lambda t, r: ["pareto", str(_run_copy(r, t, lambda d: (d / "config.yaml").unlink())[1])],
                               ["config.yaml", "no such config file"]),
        "run_dir_missing": ("run dir", "`temponas pareto` on a directory that does not exist",
                            lambda t, r: ["pareto", str(t / OUT)], ["no such run directory"]),
        "run_dir_not_a_run": ("run dir", "`temponas plot` on a directory that is not a run",
                              lambda t, r: ["plot", str(t)], ["not a temponas run directory"]),
        "resume_nothing": ("run dir", "`search --resume` with no run to resume",
                           lambda t, r: _search(_cfg(t), t, "--resume"), ["nothing to resume"]),
        "resume_other_config": ("run dir", "`--resume` with a config that differs from the run's",
                                lambda t, r: _search(_cfg(t, evaluator=faulty(t / "s2", sleep_s=0.5)), t, "--resume")
                                if _run_copy(r, t) else [],
                                ["cfg.yaml", "evaluator.options", "differs from the run being resumed"]),
        "export_out_is_a_file": ("run dir", "`temponas export --out` under an existing file",
                                 lambda t, r: ["export", str(r[1]), "--arch-id", _first_arch(r[1]),
                                               "--format", "json", "--out",
                                               str(_raw(t, "x", OUT) / "exp")],
                                 ["out/exp", "cannot write"]),
        "export_unknown_arch": ("run dir", "`temponas export` of an arch_id not in the run",
                                lambda t, r: ["export", str(_run_copy(r, t)[1]), "--arch-id", "ffffffffffff",
                                              "--format", "json", "--out", str(t / "exp")],
                                ["ffffffffffff"]),
    }


# ---- bounded input (issue 15: YAML/JSON bounds, task geometry, plug-ins, numeric ranges) ------

def yaml_bomb() -> str:
    """The 442-byte "billion laughs" config of issue 15: nine chained anchors of nine aliases
    each under ``evaluator.options`` (9**9 values once expanded)."""
    text = "name: smoke\nbackbone: tiny\nevaluator:\n  name: params\n  options:\n"
    text += '    a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for prev, cur in zip("abcdefgh", "bcdefghi"):
        text += f"    {cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]\n"
    return text


def _smoke_text(**over) -> str:
    return yaml.safe_dump({**smoke_dict(), **over}, sort_keys=False)


def _inline_tiny(channels: int | None = None, **top) -> dict:
    """The tiny preset as an inline backbone mapping, with ``top`` keys and every stage's
    channels replaced."""
    from search_space.presets import get_backbone

    d = {**get_backbone("tiny").to_dict(), "name": "inline_tiny", **top}
    for st in d["stages"] if channels is not None else ():
        st["channels"] = channels
    return d


def _grown(p: Path, size: int) -> Path:
    """``p`` extended to ``size`` bytes (a sparse tail: nothing is written to disk)."""
    with open(p, "r+b") as f:
        f.truncate(size)
    return p


def _deep_arch(tmp: Path, depth: int = 20000) -> Path:
    p = _valid_arch(tmp)
    d = json.loads(p.read_text())
    d["stages"] = "@"
    p.write_text(json.dumps(d).replace('"@"', "[" * depth + "]" * depth))
    return p


def _bounds_cases():
    S = lambda tmp, **o: _search(_cfg(tmp, **o), tmp)
    big = 10**20
    return {
        # YAML bounds: one loader (common.loaders) for every YAML temponas reads
        "yaml_billion_laughs": ("config", "442-byte YAML bomb: nine chained anchors of nine aliases "
                                "under evaluator.options (9**9 values)",
                                lambda t, r: _search(_raw(t, yaml_bomb()), t),
                                ["cfg.yaml", "aliases", "expand to more than 100,000 values"]),
        "yaml_deep_nesting": ("config", "YAML nested 20,000 deep",
                              lambda t, r: _search(_raw(t, "name: smoke\nbackbone: tiny\ntask: "
                                                        + "[" * 20000 + "]" * 20000 + "\n"), t),
                              ["cfg.yaml", "line 3", "nested deeper than 64 levels"]),
        "yaml_recursive_alias": ("config", "a YAML alias inside the list it names (`&a [*a]`)",
                                 lambda t, r: _search(_raw(t, "name: smoke\nbackbone: tiny\n"
                                                           "space: &a {defaults: *a}\n"), t),
                                 ["cfg.yaml", "refers to the mapping or list that contains it"]),
        "yaml_duplicate_key": ("config", "`search.n_trials` given twice",
                               lambda t, r: _search(_raw(t, _smoke_text().replace(
                                   "  n_trials: 16\n", "  n_trials: 16\n  n_trials: 4\n")), t),
                               ["cfg.yaml", "duplicate key 'n_trials'", "(first on line"]),
        "yaml_too_big": ("config", "a 2 MB config (a comment pads it)",
                         lambda t, r: _search(_raw(t, _smoke_text() + "#" * (2 << 20) + "\n"), t),
                         ["cfg.yaml", "bytes, more than the 1,048,576"]),
        "yaml_space_file_duplicate": ("config", "a space-only YAML (`latency probes SPACE.yaml`) "
                                      "with a key given twice",
                                      lambda t, r: ["latency", "probes", str(_raw(
                                          t, "defaults:\n  kinds: [none]\n  kinds: [conv1d]\n",
                                          "space.yaml")), "--preset", "tiny"],
                                      ["space.yaml", "line 3", "duplicate key 'kinds'"]),
        "yaml_options_file_bomb": ("config", "the YAML bomb as `proxies preview-data --options`",
                                   lambda t, r: ["proxies", "preview-data", "tiny", "--options",
                                                 str(_raw(t, yaml_bomb(), "opts.yaml")),
                                                 "--out", str(t / OUT / "strip.png")],
                                   ["opts.yaml", "expand to more than 100,000 values"]),
        # the video task, validated against the backbone when the config is loaded
        "task_height_indivisible": ("config", "`task: {latent_height: 7}` (the tiny backbone "
                                    "halves it once)",
                                    lambda t, r: S(t, task={"latent_height": 7}),
                                    ["cfg.yaml", "task.latent_height", "divisible by 2"]),
        "task_frames_huge": ("config", "`task: {num_frames: 100000}`",
                             lambda t, r: S(t, task={"num_frames": 100000}),
                             ["cfg.yaml", "task.num_frames", "<= 1,024"]),
        "scale_height_indivisible": ("config", "`evaluator.options.scale.latent_height: 7` "
                                     "(naswot's proxy geometry)",
                                     lambda t, r: S(t, evaluator={"name": "naswot", "options": {
                                         "scale": {"latent_height": 7}}}),
                                     ["cfg.yaml", "evaluator.options.scale.latent_height",
                                      "divisible by 2"]),
        "backbone_norm_groups_zero": ("config", "inline backbone with `norm_groups: 0`",
                                      lambda t, r: S(t, backbone=_inline_tiny(norm_groups=0),
                                                     task={"text_dim": 32}),
                                      ["cfg.yaml", "backbone", "norm_groups", ">= 1"]),
        "backbone_channels_huge": ("config", "inline backbone whose stages have 2**20 channels",
                                   lambda t, r: S(t, backbone=_inline_tiny(channels=2**20),
                                                  task={"text_dim": 32}),
                                   ["cfg.yaml", "backbone", "stage down0: channels", "<= 65,536"]),
        # module:Class evaluators: checked to be evaluator classes before anything calls them
        "plugin_os_system": ("config", "`evaluator.name: os:system` (a function)",
                             lambda t, r: S(t, evaluator={"name": "os:system"}),
                             ["cfg.yaml", "evaluator", "'os:system'", "not an evaluator class"]),
        "plugin_subprocess_popen": ("config", "`evaluator.name: subprocess:Popen` (a class, not an "
                                    "evaluator)",
                                    lambda t, r: S(t, evaluator={"name": "subprocess:Popen"}),
                                    ["cfg.yaml", "evaluator", "'subprocess:Popen'",
                                     "not an evaluator", "nothing was called"]),
        "plugin_this_s": ("config", "`evaluator.name: this:s` (a string)",
                          lambda t, r: S(t, evaluator={"name": "this:s"}),
                          ["cfg.yaml", "evaluator", "'this:s' is a str"]),
        # numeric space choices
        "space_heads_zero": ("search space", "`space.defaults.heads: [0]`",
                             lambda t, r: S(t, space={"defaults": {"heads": [0]}}),
                             ["cfg.yaml", "space.defaults.heads", ">= 1"]),
        "space_kernel_huge": ("search space", "`space.defaults.kernel_t: [1000001]`",
                              lambda t, r: S(t, space={"defaults": {"kernel_t": [1000001]}}),
                              ["cfg.yaml", "space.defaults.kernel_t", "<= 31"]),
        "space_counts_huge": ("search space", "`space.defaults.counts: [10**12]`",
                              lambda t, r: S(t, space={"defaults": {"counts": [10**12]}}),
                              ["cfg.yaml", "space.defaults.counts", "<= 64"]),
        # deeply nested arch JSON
        "arch_deep_nesting_space": ("arch JSON", "arch JSON nested 20,000 deep (`space --arch`)",
                                    lambda t, r: ["space", "--arch", str(_deep_arch(t)), "--json"],
                                    ["arch.json", "nested deeper than 64 levels"]),
        "arch_deep_nesting_latency": ("arch JSON", "arch JSON nested 20,000 deep "
                                      "(`latency predict --arch`)",
                                      lambda t, r: ["latency", "predict", "--device", "iphone16pm",
                                                    "--arch", str(_deep_arch(t)), "--json"],
                                      ["arch.json", "nested deeper than 64 levels"]),
        # numeric option ranges (common.limits.OPTION_RANGES)
        "range_threads_huge": ("config", "`evaluator.threads: 10**20`",
                               lambda t, r: S(t, evaluator={"threads": big}),
                               ["cfg.yaml", "evaluator.threads", "<= 1,024"]),
        "range_retries_huge": ("config", "`evaluator.retries: 10**6`",
                               lambda t, r: S(t, evaluator={"retries": 10**6}),
                               ["cfg.yaml", "evaluator.retries", "<= 100"]),
        "range_memory_budget_huge": ("config", "`constraints.memory_budget_mb: 1e300`",
                                     lambda t, r: S(t, constraints={"memory_budget_mb": 1e300}),
                                     ["cfg.yaml", "constraints.memory_budget_mb", "<= 100,000,000"]),
        "range_option_batch_huge": ("config", "`evaluator.options.batch: 10**9` (naswot)",
                                    lambda t, r: S(t, evaluator={"name": "naswot",
                                                                 "options": {"batch": 10**9}}),
                                    ["cfg.yaml", "evaluator.options.batch", "<= 4,096"]),
        "range_sampler_option_huge": ("config", "`search.sampler_options.population_size: 10**12`",
                                      lambda t, r: S(t, search={"sampler_options": {"population_size": 10**12}}),
                                      ["cfg.yaml", "search.sampler_options.population_size",
                                       "<= 100,000"]),
        "range_cli_calibration_huge": ("config", "`latency probes --calibration 1000000000`",
                                       lambda t, r: ["latency", "probes", "--preset", "tiny",
                                                     "--calibration", str(10**9)],
                                       ["--calibration", "<= 100,000"]),
        "range_cli_n_trials_huge": ("config", "`--n-trials 1000000000000`",
                                    lambda t, r: _search(_cfg(t), t, "--n-trials", str(10**12)),
                                    ["--n-trials", "<= 10,000,000"]),
        # measurement CSV rows
        "csv_negative_channels": ("measurement CSV", "in_channels = -64 on line 3",
                                  lambda t, r: _fit(t, _csv_edit(t, _set_col("in_channels", "-64", 3))),
                                  ["meas.csv", "line 3", "column in_channels", "outside 0..65536"]),
        "csv_huge_channels": ("measurement CSV", "in_channels = 10**9 on line 2",
                              lambda t, r: _fit(t, _csv_edit(t, _set_col("in_channels", str(10**9)))),
                              ["meas.csv", "line 2", "column in_channels", "outside 0..65536"]),
        "csv_latency_1e308": ("measurement CSV", "latency_ms = 1e308 on line 4",
                              lambda t, r: _fit(t, _csv_edit(t, _set_col("latency_ms", "1e308", 4))),
                              ["meas.csv", "line 4", "column latency_ms", "outside"]),
        "csv_too_big": ("measurement CSV", "a 65 MiB measurement file (sparse, past the 64 MiB bound)",
                        lambda t, r: _fit(t, _grown(valid_measurement_csv(t), 65 << 20)),
                        ["meas.csv", "bytes, more than the 67,108,864"]),
        "csv_extra_fields": ("measurement CSV", "two fields beyond the header on line 5",
                             lambda t, r: _fit(t, _csv_edit(t, lambda rows: rows[:4] + [rows[4] + ["1", "2"]] + rows[5:])),
                             ["meas.csv", "line 5", "2 field(s) beyond the header"]),
    }


def _first_arch(run: Path) -> str:
    return next(p.stem for p in sorted((run / "archs").glob("*.json")))


def _utf16(p: Path) -> Path:
    p.write_bytes(p.read_text().encode("utf-16"))
    return p


def _strip_id(s: str) -> str:
    d = json.loads(s)
    d.pop("arch_id", None)
    return json.dumps(d, indent=2)


def _rename_stage(s: str) -> str:
    d = json.loads(_strip_id(s))
    first = d["stage_order"][0]
    d["stages"]["down9"] = d["stages"].pop(first)
    d["stage_order"][0] = "down9"
    return json.dumps(d, indent=2)


def _arch_cmd(tmp: Path, edit) -> list[str]:
    p = _valid_arch(tmp)
    p.write_text(edit(p.read_text()))
    return ["space", "--arch", str(p), "--json"]


def _fit(tmp: Path, csv: Path) -> list[str]:
    return ["latency", "fit", str(csv), "--out", str(tmp / OUT)]


def _snapshot(d: Path) -> dict[str, str]:
    if not d.exists():
        return {}
    if d.is_file():
        return {".": hashlib.sha256(d.read_bytes()).hexdigest()}
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file() and p.name != ".lock"}


CASES = {**_cases(), **_bounds_cases()}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_one_line_exit_2_nothing_written(case, tmp_path, finished_run, record):
    category, what, build, fragments = CASES[case]
    argv = build(tmp_path, finished_run)
    out_dir = tmp_path / OUT
    before = _snapshot(out_dir)
    existed = out_dir.exists()
    rc, out, err = cli(*argv)
    msg = one_line_error(rc, err)
    for frag in fragments:
        assert frag in msg, (frag, msg)
    # nothing half-written: the output location is as it was (absent, or unchanged)
    assert out_dir.exists() == existed, f"{out_dir} created by a failing command"
    assert _snapshot(out_dir) == before, "a failing command changed the run directory"
    assert not list(tmp_path.rglob("*.tmp"))
    cmd = "temponas " + " ".join(a if not a.startswith(str(tmp_path)) else
                                 "<tmp>" + a[len(str(tmp_path)):] for a in argv[:2])
    record("bad input", f"{category}: {what}", f"`{cmd}`",
           f"exit 2: \"{msg.replace(str(tmp_path), '<tmp>')}\"",
           "nothing written" if not existed else "run directory unchanged (byte-identical)")


def test_yaml_bomb_refused_fast_and_small(tmp_path, record):
    """The 442-byte alias bomb that took 3.7 GB and 104 s is refused while parsing: well under
    a second, a few MB allocated (tracemalloc peak of the whole load)."""
    import time
    import tracemalloc

    from common.errors import ConfigError
    from experiments.config import load_config

    p = _raw(tmp_path, yaml_bomb())
    assert len(p.read_bytes()) == 442
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="expand to more than 100,000 values") as e:
        load_config(p)
    wall_s = time.perf_counter() - t0
    peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    assert wall_s < 1.0 and peak_mb < 50, (wall_s, peak_mb)
    record("bad input", "config: 442-byte YAML alias bomb (issue 15: 3.7 GB, 104 s before)",
           "`load_config(<tmp>/cfg.yaml)`", f"ConfigError: \"{str(e.value).replace(str(tmp_path), '<tmp>')}\"",
           f"refused in {wall_s * 1000:.1f} ms, {peak_mb:.2f} MB allocated at peak")
