"""Every command line shown in README.md and docs/*.md runs, at small sizes (issue 11).

The lines come from the docs themselves: every line of a ```sh block, every line of an
unlabeled ``` block that starts like a command, and every inline `code` span that does
(``temponas``, ``make``, ``.venv/bin/...``, ``python``, ``python3``, ``pip``). Each documented
line must be a key of exactly one table:

* ``AS_DOCUMENTED``: run exactly as written;
* ``SUBSTITUTED``: run as the steps given, every difference from the documented line justified
  in ``why`` (tiny presets and sizes, a stand-in for a file only a phone makes, ...);
* ``SKIPPED``: cannot run on Linux (or needs a multi-GB environment of its own), with the
  reason.

Two kinds of line need no entry: an inline mention that is the start of a covered line
(`temponas latency fit` names the command `temponas latency fit cpu.csv ...` runs), and a
line inside the scenario tables of the generated docs/reliability.md (each is the record of the
reliability test that ran it). A documented line in no table, or a table key no doc shows,
fails ``test_every_documented_command_line_is_covered``.

How a step runs: ``temponas ...`` in this process through ``experiments.cli.main`` (the console
script's function) and ``python X.py`` / ``python -m X`` through ``runpy`` (imports are
shared, so ~40 lines cost seconds, not minutes); ``make``, ``pip`` and ``.venv/bin/...`` lines
as real subprocesses, ``make`` lines through their recipe as ``make -n`` prints it.
``python``, ``pip`` and ``.venv/bin/`` mean the virtualenv running this test. Everything runs
in one temporary workspace (cwd): one small search run (the `tiny` smoke config) serves
pareto/plot/export, one Ray instance serves every search, and the documented outputs
(``cpu.csv``, ``model_dir``, ``bundle``) feed the lines after them.
"""

from __future__ import annotations

import json
import os
import re

import pytest
import yaml
from doc_walk import BIN, ROOT, Case, Walk, all_doc_lines, doc_lines, mention_of

SMOKE = ROOT / "experiments" / "configs" / "smoke.yaml"

#: torch-evaluator options small enough for seconds (3 frames of 8x8 latents, 12 pretraining steps)
TINY_TORCH = {
    "scale": {"width_mult": 1.0, "num_frames": 3, "latent_height": 8, "latent_width": 8,
              "text_tokens": 4},
    "data": {"num_train": 12, "num_val": 4, "patch": 2},
    "pretrain": {"steps": 12, "batch": 2, "lr": 3e-3},
    "batch": 2,
}


# ---- the tables -------------------------------------------------------------------------------
L_MEASURE = ("temponas latency measure CONFIG --out cpu.csv --threads 1 --repeats 5 --networks 40 "
             "--calibration 900 --calibration-repeats 4 --clock cpu")
L_FIT = "temponas latency fit cpu.csv --predictor lut|roofline|regression --out model_dir"
L_EXPORT_PROBES = "temponas latency export-probes CONFIG --out bundle --target iOS18 [--networks 5]"
L_SEARCH = ("temponas search CONFIG [--n-trials N] [--workers W] [--ray-address ADDR] [--out DIR] "
            "[--resume]")
L_MAKE_SEARCH = "make search"
L_MY_SEARCH = "temponas search configs/my_model.yaml --ray-address HEAD_IP:6379"
L_MY_PREVIEW = "temponas proxies preview-data configs/my_model.yaml --out clips.gif --n 4"
L_AUDIT = ("temponas proxies audit snapgen_v --n-archs 24 --budgets 15,30 --seeds 2 --out runs/audit "
           "--workers 2")

AS_DOCUMENTED: dict[str, Case] = {
    "temponas space --preset snapgen_v": Case(expect=("distinct architectures",)),
    "temponas latency devices": Case(expect=("iphone16pm",)),
    # the README's example config (`name: my_search`), saved where the line expects it
    "temponas latency probes experiments/configs/my_search.yaml":
        Case(expect=("distinct block signatures for snapgen_v",)),
    "python bundle/run_on_device.py bundle --template --device iPhone17,2 --out phone.csv":
        Case(after=(L_EXPORT_PROBES,), files=("phone.csv",)),
    "temponas latency predict --device iphone16pm --preset sd21 --frames 1 --batch 2":
        Case(expect=("latency ",)),
    "temponas latency fitset --excluded": Case(expect=("EXCLUDED",)),
    "temponas proxies list": Case(expect=("naswot",)),
    "temponas proxies preview-data --out train.png": Case(files=("train.png",)),
    "temponas proxies preview-data --out val.gif --split val --decoded": Case(files=("val.gif",)),
    # docs/your_model.md: configs/my_model.yaml is its config at toy size (MY_MODEL_SUBS below)
    L_MY_PREVIEW: Case(expect=("4 train videos of 4 frames, 64x64 px",), files=("clips.gif",)),
    "temponas proxies preview-data configs/my_model.yaml --out decoded.gif --n 4 --decoded":
        Case(expect=("64x64 px, decoded",), files=("decoded.gif",)),
    "temponas pareto runs/my_model": Case(after=(L_MY_SEARCH,), expect=("on the feasible front",)),
}

_TINY_AUDIT = ("tiny (snapgen_v's proxy-scale backbone pretrains ~3 min), 4 architectures (the "
               "minimum), one budget of 1 step, one seed, naswot only (every proxy takes the same "
               "path), tiny torch options (3 frames of 8x8, 12 pretraining steps), 20 bootstrap "
               "resamples, 1 worker (a second process would import torch again)")
_HELP_ONLY = ("the list of sub-commands: each one runs for real in its own documented line "
              "(docs/latency.md, docs/proxies.md); here each one's --help shows it exists")
_BENCH = ("a benchmark: its smallest mode (--quick) runs for minutes and --json rewrites the "
          "committed results (`make bench` runs it); here: it starts and parses its flags")

SUBSTITUTED: dict[str, Case] = {
    L_MAKE_SEARCH: Case(
        why="default.yaml in the workspace scores with `params` (supernet pretrains its denoiser for "
            "~2 min) over 4 trials; the recipe runs twice (the second resumes) and joins the "
            "test's Ray (--ray-address) instead of starting its own",
        make_subs=(("$(test", "--ray-address {ray} --no-progress $(test"),), repeat=2,
        expect=("runs/default: ",), files=("runs/default/study.journal", "runs/default/report.md")),
    "make test": Case(
        why="the suite this test belongs to (running it would recurse): ruff runs for real, "
            "pytest only collects this file",
        cwd="root",
        make_subs=(("-m pytest", "-m pytest --collect-only -q -p no:cacheprovider "
                                 "tests/test_docs_commands.py"),),
        expect=("All checks passed!", "test_docs_commands.py")),
    "make reliability-doc": Case(
        why="the whole reliability suite takes ~2 min: one safety scenario, its records and the "
            "page rendered (--partial) into the workspace instead of docs/reliability.md",
        cwd="root",
        make_subs=((".pytest_cache/temponas_reliability.json", "{ws}/reliability.json"),
                   (" tests/reliability;", " -p no:cacheprovider "
                    "tests/reliability/test_rel_safety.py -k unsafe_deserialization;"),
                   ("tools/reliability_table.py", "tools/reliability_table.py --partial"),
                   ("docs/reliability.md", "{ws}/reliability.md")),
        files=("reliability.md",), expect=("reliability.md",)),
    L_SEARCH: Case(
        steps=("temponas search {smoke} --n-trials 8 --workers 1 --ray-address {ray} --out runs/smoke "
               "--no-progress",
               "temponas search {smoke} --n-trials 10 --workers 1 --ray-address {ray} --out runs/smoke "
               "--resume --no-progress"),
        why="CONFIG = the tiny smoke config, 8 trials, then --resume to 10 (a fresh run has "
            "nothing to resume); ADDR = the test's Ray; 1 worker",
        expect=("runs/smoke: ",), files=("runs/smoke/pareto.csv",)),
    "temponas search CONFIG --out runs/<name> --resume": Case(
        steps=("temponas search {smoke} --out runs/smoke --resume --no-progress",),
        why="CONFIG = the smoke config of the run, <name> = smoke", after=(L_SEARCH,),
        expect=("runs/smoke: ",)),
    "temponas pareto RUN": Case(steps=("temponas pareto runs/smoke",), why="RUN = the small run",
                                after=(L_SEARCH,), expect=("on the feasible front",)),
    "temponas plot RUN": Case(steps=("temponas plot runs/smoke",), why="RUN = the small run",
                              after=(L_SEARCH,), files=("runs/smoke/plots/pareto_front.png",)),
    "temponas export RUN --arch-id ID --format json|torch|coreml --out DIR": Case(
        steps=("temponas export runs/smoke --arch-id {arch_id} --format json --out exported",
               "temponas export runs/smoke --arch-id {arch_id} --format torch --out exported"),
        why="RUN = the small run, ID = a member of its front, DIR = exported; json and torch here, "
            "coreml (a ~15 s conversion of the same tiny network) in the test named below",
        covered_by=(("tests/experiments/test_exp_search.py::test_export_coreml_writes_an_mlpackage",
                     '"--format", "coreml"'),),
        after=(L_SEARCH,), files=("exported/LOADING.md",)),
    "temponas latency devices|predict|probes|measure|fit|report|export-probes": Case(
        steps=tuple(f"temponas latency {c} --help" for c in
                    "devices predict probes measure fit report export-probes".split()),
        why=_HELP_ONLY),
    "temponas proxies list|preview-data|audit": Case(
        steps=tuple(f"temponas proxies {c} --help" for c in ("list", "preview-data", "audit")),
        why=_HELP_ONLY),
    ".venv/bin/pip install optuna-dashboard==0.21.0": Case(
        steps=(".venv/bin/pip install --no-index optuna-dashboard==0.21.0",),
        why="--no-index: tests never download; the dev extra `make` installs already holds it",
        expect=("optuna-dashboard",)),
    ".venv/bin/optuna-dashboard runs/default/study.journal": Case(
        steps=(".venv/bin/optuna-dashboard runs/default/study.journal --port {port}",),
        why="a server: on a free port, until /api/studies lists the study, then stopped",
        after=(L_MAKE_SEARCH,), server="/api/studies", expect=("study_summaries",)),
    "python -m latency_models.apple_priors": Case(
        steps=("python -m latency_models.apple_priors --out profiles",),
        why="--out: the default rewrites the shipped latency_models/profiles/*.json; the rebuilt "
            "priors must predict what the shipped ones do (checked below)",
        expect=("iphone16pm",)),
    "temponas latency probes CONFIG --calibration 900": Case(
        steps=("temponas latency probes {smoke} --calibration 20",),
        why="CONFIG = the tiny smoke config, 20 calibration blocks (their neighbour spaces cost "
            "~5 s on snapgen_v's space, whatever the count; 900 draws take longer)",
        expect=("distinct block signatures",)),
    L_MEASURE: Case(
        steps=("temponas latency measure {smoke} --out cpu.csv --threads 1 --repeats 2 --networks 1 "
               "--calibration-repeats 1 --clock cpu --limit 5 --warmup 1 --min-runs 2 --max-runs 3 "
               "--time-limit 0.1 --no-progress",),
        why="CONFIG = the tiny smoke config; 5 probes, 2 repeats, 1 network, at most 3 timed calls "
            "of 0.1 s per probe (the documented run takes ~30 min); no calibration blocks (drawing "
            "them costs ~5 s whatever the count; the probes line above draws them, "
            "tests/latency_models/test_lat_torch_cpu.py times them)",
        files=("cpu.csv",)),
    L_FIT: Case(
        steps=tuple(f"temponas latency fit cpu.csv --predictor {p} --out model_dir --no-progress"
                    for p in ("lut", "roofline", "regression")),
        why="each predictor of the alternatives; --no-progress", after=(L_MEASURE,),
        files=("model_dir/model.json",)),
    "temponas latency report model_dir held_out.csv --out report/": Case(
        steps=("temponas latency report model_dir cpu.csv --out report/",),
        why="held_out.csv = cpu.csv (a second measurement would double the timing; the report "
            "computes the same either way)", after=(L_FIT,), files=("report/parity.png",)),
    "temponas latency fit phone.csv --prior iphone16pm --out model_dir": Case(
        steps=("temponas latency fit cpu.csv --prior iphone16pm --out model_dir --no-progress",),
        why="phone.csv comes from an iPhone via Xcode (the template has no latencies): the "
            "torch-cpu measurement stands in", after=(L_MEASURE,), expect=("held-out",)),
    L_EXPORT_PROBES: Case(
        steps=("temponas latency export-probes {smoke} --out bundle --target iOS18 --limit 1 "
               "--no-progress",),
        why="CONFIG = the tiny smoke config, one probe (--limit 1), [--networks 5] left out (one "
            "whole-network conversion takes ~20 s; tests/latency_models/test_lat_coreml.py "
            "converts networks)", files=("bundle/manifest.json",)),
    L_AUDIT:
        Case(steps=("temponas proxies audit tiny --n-archs 4 --budgets 1 --seeds 1 --out runs/audit "
                    "--workers 1 --proxies naswot --options tiny_torch.yaml --bootstrap 20",),
             why=_TINY_AUDIT, files=("runs/audit/audit.json",)),
    "temponas proxies audit experiments/configs/my.yaml --n-archs 24 --budgets 15,30 --seeds 2 --out DIR":
        Case(steps=("temponas proxies audit experiments/configs/my.yaml --n-archs 4 --budgets 1 "
                    "--seeds 1 --out audit_my --proxies naswot --bootstrap 20",),
             why="my.yaml = the smoke config (tiny) with naswot and the tiny torch options and the "
                 "default space; as the line above (whose short-training results it reuses from "
                 "the cache), DIR = audit_my", after=(L_AUDIT,),
             files=("audit_my/audit.md",)),
    "pip install -e .[hf,video]": Case(
        steps=(".venv/bin/pip install --no-index diffusers==0.42.1 transformers==5.24.0 av==18.1.0",),
        why="the packages the hf and video extras pin, from the installed set (--no-index: tests "
            "never download; reinstalling the checkout would re-point the venv's editable install)",
        expect=("diffusers",)),
    L_MY_SEARCH: Case(
        steps=("temponas search configs/my_model.yaml --ray-address {ray} --no-progress",),
        why="HEAD_IP:6379 = the test's Ray; configs/my_model.yaml = the documented config at toy "
            "size (MY_MODEL_SUBS: each substitution and its reason)",
        after=(L_MY_PREVIEW,), expect=("runs/my_model: 3 complete",),
        files=("runs/my_model/pareto.csv",)),
    "temponas export runs/my_model --arch-id ID --format torch|coreml --out exported/ID": Case(
        steps=("temponas export runs/my_model --arch-id {arch_id_my_model} --format torch "
               "--out exported/{arch_id_my_model}",),
        why="ID = a member of the run's front; torch here, coreml in the test named below",
        covered_by=(("tests/experiments/test_exp_search.py::test_export_coreml_writes_an_mlpackage",
                     '"--format", "coreml"'),),
        after=(L_MY_SEARCH,), expect=("model.safetensors",)),
    "python benchmarks/latency_accuracy.py --json": Case(
        steps=("python benchmarks/latency_accuracy.py --help",), why=_BENCH, cwd="root"),
    "python benchmarks/proxy_fidelity.py [--quick] --json": Case(
        steps=("python benchmarks/proxy_fidelity.py --help",), why=_BENCH, cwd="root"),
    "python benchmarks/your_model_e2e.py --json": Case(
        steps=("python benchmarks/your_model_e2e.py --help",), why=_BENCH, cwd="root"),
    "python benchmarks/proxy_fidelity.py --json": Case(
        steps=("python benchmarks/proxy_fidelity.py --help",), why=_BENCH, cwd="root"),
    "python benchmarks/supernet_design.py --json": Case(
        steps=("python benchmarks/supernet_design.py --help",), why=_BENCH, cwd="root"),
    "temponas proxies audit snapgen_v --choose-sample-seed 0 --report-sample-seed 1 --out DIR ...":
        Case(steps=("temponas proxies audit tiny --choose-sample-seed 0 --report-sample-seed 1 "
                    "--out audit_heldout --n-archs 4 --budgets 1 --seeds 1 --workers 1 "
                    "--proxies naswot --options tiny_torch.yaml --bootstrap 20",),
             why=_TINY_AUDIT + "; DIR = audit_heldout; '...' = the other flags as the line above",
             after=(L_AUDIT,), files=("audit_heldout/heldout.md", "audit_heldout/report/audit.json")),
}

_PRIORS = ("the same refit as `python -m latency_models.apple_priors` (which rebuilds the priors "
           "into the workspace and checks them against the shipped ones); writing here would "
           "rewrite the shipped latency_models/profiles/*.json")
SUBSTITUTED.update({
    "temponas latency fitset [--excluded] [--json]": Case(
        steps=("temponas latency fitset", "temponas latency fitset --json"),
        why="the optional flags: the plain table and --json (--excluded runs as its own line)",
        expect=("rows in the fit",)),
    "make priors": Case(why=_PRIORS, cwd="root", make_subs=(("build-priors", "build-priors --help"),),
                        expect=("--out",)),
    "temponas latency build-priors": Case(steps=("temponas latency build-priors --help",), why=_PRIORS),
    "python benchmarks/prior_transfer.py --json": Case(
        steps=("python benchmarks/prior_transfer.py --help",), why=_BENCH, cwd="root"),
    "python benchmarks/multifidelity.py --json": Case(
        steps=("python benchmarks/multifidelity.py --help",), why=_BENCH, cwd="root"),
    "python benchmarks/multifidelity.py --seeds 100 --eval-seeds 0 --n-trials 32 --tune "
    "2,5,2,0.25;3,10,3,0.25;5,6,3,0.25 --json": Case(
        steps=("python benchmarks/multifidelity.py --help",), why=_BENCH, cwd="root"),
    "python benchmarks/multifidelity.py --seeds 100 --eval-seeds 0 --n-trials 32 --tune "
    "2,5,2,0.25,2;3,10,1,0.25,3 --json": Case(
        steps=("python benchmarks/multifidelity.py --help",), why=_BENCH, cwd="root"),
    "python benchmarks/search_efficiency.py --tune --json": Case(
        steps=("python benchmarks/search_efficiency.py --help",), why=_BENCH, cwd="root"),
})

SKIPPED: dict[str, str] = {
    "temponas search ... --ray-address HEAD_IP:6379":
        "an inline summary (elided arguments) of docs/clusters.md's search line, which runs as "
        "documented above",
    "make fitset-features":
        "builds a separate 5.5 GB environment (torch 2.14.1 + torchvision, timm, open_clip) and "
        "converts 204 programs (~75 min); its output is committed, and "
        "tests/latency_models/test_ane_mil.py::test_extraction_writes_tables_the_fit_reads runs a "
        "temponas block through the same extraction path into the tables the fit reads",
    "ray start --head --port 6379 --num-gpus 8":
        "starts Ray's daemons on a GPU head node (the walk's searches join the test's own Ray)",
    "ray start --address HEAD_IP:6379 --num-gpus 8":
        "joins GPU worker nodes to that cluster (tests/experiments/test_exp_cluster.py joins a "
        "real second node)",
    "python3 -m venv venv && . venv/bin/activate && pip install coremltools numpy":
        "sets up Python on the Mac that runs a probe bundle (and downloads packages)",
    "python bundle/run_on_device.py bundle --compute-units cpu_and_ne --runs 50 --repeats 3":
        "Core ML predictions need macOS (on Linux the runner refuses; --template runs above)",
}


def case_of(key: str) -> Case:
    if key in AS_DOCUMENTED:
        c = AS_DOCUMENTED[key]
        return Case(steps=(key,), after=c.after, expect=c.expect, files=c.files, cwd=c.cwd)
    return SUBSTITUTED[key]


# ---- docs/your_model.md's config at toy size ----------------------------------------------------
#: (dotted key, value or DROP, why): how configs/my_model.yaml differs from the documented one
DROP = object()
MY_MODEL_SUBS: tuple[tuple[str, object, str], ...] = (
    ("backbone", {"diffusers": "{ws}/sd15/unet", "weights": True}, "the toy pipeline's UNet"),
    ("task", {"num_frames": 4, "latent_height": 8, "latent_width": 8, "text_tokens": 8}, "toy size"),
    ("evaluator.budget", 2, "toy size"),
    ("evaluator.seeds", [0], "one seed"),
    ("evaluator.options.scale", {"num_frames": 4, "latent_height": 8, "latent_width": 8,
                                 "text_tokens": 8}, "toy size (the real width, as documented)"),
    ("evaluator.options.data.path", "{ws}/clips/manifest.csv", "12 toy mp4 clips (tiny_media)"),
    ("evaluator.options.data.vae", "{ws}/sd15/vae", "the toy pipeline (tiny_media.tiny_pipeline)"),
    ("evaluator.options.data.text_encoder", "{ws}/sd15/text_encoder", "the toy pipeline"),
    ("evaluator.options.data.num_train", 9, "toy size"),
    ("evaluator.options.data.num_val", 3, "toy size"),
    ("evaluator.options.data.cache_dir", "{ws}/cache/data", "the walk's cache"),
    ("evaluator.options.cache_dir", "{ws}/cache", "the walk's cache"),
    ("evaluator.options.batch", 3, "toy size"),
    ("evaluator.options.resources", {"num_cpus": 1}, "no GPU here"),
    ("evaluator.options.device", DROP, "issue12-compute's option: 'cpu' here once it is on main"),
    ("evaluator.options.precision", DROP, "issue12-compute's option, not on main yet"),
    ("search", {"sampler": "nsga2", "sampler_options": {"population_size": 4}, "n_trials": 3,
                "workers": 1, "seed": 0}, "toy size, one worker"),
)


def my_model_config(ws) -> dict:
    """docs/your_model.md's experiment config with :data:`MY_MODEL_SUBS` applied."""
    text = (ROOT / "docs" / "your_model.md").read_text(encoding="utf-8")
    cfg = yaml.safe_load(re.search(r"```yaml\n(name: my_model.*?)```", text, re.S).group(1))
    for key, value, _ in MY_MODEL_SUBS:
        *parents, leaf = key.split(".")
        node = cfg
        for k in parents:
            node = node[k]
        assert leaf in node or value is not DROP, f"{key}: not in the documented config"
        if value is DROP:
            del node[leaf]
        else:
            node[leaf] = json.loads(json.dumps(value).replace("{ws}", str(ws)))
    return cfg


# ---- coverage ---------------------------------------------------------------------------------
def test_every_documented_command_line_is_covered():
    tables = (set(AS_DOCUMENTED), set(SUBSTITUTED), set(SKIPPED))
    assert not (tables[0] & tables[1] or tables[0] & tables[2] or tables[1] & tables[2])
    runnable = [*AS_DOCUMENTED, *SUBSTITUTED]
    shown, missing = set(), []
    for d in all_doc_lines():
        if d.kind == "table" and d.doc == "reliability.md":
            continue  # the record of a reliability scenario that ran this command line
        if d.key in AS_DOCUMENTED or d.key in SUBSTITUTED or d.key in SKIPPED:
            shown.add(d.key)
        elif not (d.kind == "inline" and mention_of(d, runnable)):
            missing.append(f"{d.doc}:{d.line}: {d.text}")
    assert not missing, "documented command lines the walk neither runs nor skips:\n" + "\n".join(missing)
    stale = sorted(set().union(*tables) - shown)
    assert not stale, f"table entries no doc shows any more: {stale}"
    for key, case in SUBSTITUTED.items():
        assert case.why, f"{key}: a substitution needs its reason"
        assert case.steps or key.startswith("make "), key
        for node, text in case.covered_by:
            path, func = node.split("::")
            src = (ROOT / path).read_text(encoding="utf-8")
            body = src[src.index(f"def {func}("):].split("\ndef ", 1)[0]
            assert text in body, f"{key}: {node} no longer runs {text}"


def test_the_walk_reads_fences_continuations_and_inline_spans(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("Run `temponas latency\nfit` then.\n\n```sh\nmake search   # note\n```\n\n"
                   "```\ntemponas latency measure A \\\n    --out b.csv\nnot a command\n```\n\n"
                   "```yaml\ntemponas: ignored\n```\n| a | `temponas pareto <tmp>/out` |\n")
    got = [(d.line, d.kind, d.key) for d in doc_lines(doc)]
    assert got == [(5, "block", "make search"), (10, "block", "temponas latency measure A --out b.csv"),
                   (1, "inline", "temponas latency fit"), (17, "table", "temponas pareto <tmp>/out")]


# ---- the walk ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def walk(tmp_path_factory):
    import ray

    from experiments.distributed import ensure_ray

    ws = tmp_path_factory.mktemp("docs_walk")
    configs = ws / "experiments" / "configs"
    configs.mkdir(parents=True)
    # the README's example experiment config, under the name the docs use for it
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    example = re.search(r"```yaml\n(name: my_search.*?)```", readme, re.S).group(1)
    (configs / "my_search.yaml").write_text(example)
    default = yaml.safe_load((ROOT / "experiments" / "configs" / "default.yaml").read_text())
    default["evaluator"]["name"] = "params"
    default["search"]["n_trials"] = 4
    (configs / "default.yaml").write_text(yaml.safe_dump(default, sort_keys=False))
    smoke = yaml.safe_load(SMOKE.read_text())
    smoke["evaluator"] = {**smoke["evaluator"], "name": "naswot", "options": TINY_TORCH}
    del smoke["space"]  # tiny's default space: the audit samples what the preset line sampled
    (configs / "my.yaml").write_text(yaml.safe_dump(smoke, sort_keys=False))
    (ws / "tiny_torch.yaml").write_text(yaml.safe_dump(TINY_TORCH))
    # docs/your_model.md: a toy SD-style pipeline, 12 clips, and the page's config at toy size
    from tiny_media import tiny_pipeline, write_clips

    tiny_pipeline(ws / "sd15")
    write_clips(ws / "clips")
    (ws / "configs").mkdir()
    (ws / "configs" / "my_model.yaml").write_text(yaml.safe_dump(my_model_config(ws), sort_keys=False))

    pythonpath = [str(ROOT), *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(pythonpath),
           "PATH": os.pathsep.join([str(BIN), os.environ["PATH"]]),
           "TEMPONAS_CACHE": str(ws / "cache"),
           "RAY_USAGE_STATS_ENABLED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEMPONAS_CACHE", env["TEMPONAS_CACHE"])  # for the lines run in this process
        if ray.is_initialized():
            ray.shutdown()
        ensure_ray(None, 2)
        # the lines that join this Ray (--ray-address) need its per-run token
        env.update({k: os.environ[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")})
        try:
            yield Walk(ws, ray.get_runtime_context().gcs_address, env, case_of, SMOKE)
        finally:
            ray.shutdown()


@pytest.mark.parametrize("key", [*AS_DOCUMENTED, *SUBSTITUTED])
def test_documented_command_runs(walk, key):
    walk.run(key)


def test_rebuilt_priors_predict_what_the_shipped_ones_do(walk):
    from latency_models import load_latency_model, profile_names
    from search_space.arch import ArchConfig
    from search_space.presets import default_task, get_backbone

    walk.run("python -m latency_models.apple_priors")
    bb = get_backbone("sd21")
    arch = ArchConfig.create("sd21", default_task("sd21"), {}, bb.stage_ids)
    for name in profile_names():
        rebuilt = load_latency_model(walk.ws / "profiles" / f"{name}.json")
        assert rebuilt.predict(arch, bb).mean_ms == pytest.approx(
            load_latency_model(name).predict(arch, bb).mean_ms, rel=1e-9), name


def test_dashboard_reads_the_study_of_make_search(walk):
    body = json.loads(walk.run(".venv/bin/optuna-dashboard runs/default/study.journal"))
    (study,) = [s for s in body["study_summaries"] if s["study_name"] == "default"]
    assert study["directions"] and study["study_id"] is not None
