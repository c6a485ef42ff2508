"""Core ML export: every temporal kind and every spatial block op converts to an fp16 mlprogram
(one tiny probe each, exported as a real bundle), MIL features, and the macOS runner's own code
path with only the Core ML calls replaced (Linux cannot compile or run Core ML models)."""

from __future__ import annotations

import importlib.util
import json

import pytest
from lat_helpers import tiny_space

from latency_models.backends.coreml_export import export_bundle, mil_features
from latency_models.features import op_table
from latency_models.measurements import COLUMNS, read_csv
from latency_models.probes import probes
from search_space.arch import TemporalKind
from search_space.geometry import BlockOp

pytestmark = pytest.mark.coreml

ALL_OPS = ({o.value for o in BlockOp if o is not BlockOp.TEMPORAL}
           | {f"temporal:{k.value}" for k in TemporalKind if k is not TemporalKind.NONE})


def _representatives():
    """The cheapest tiny probe of every block op / temporal kind."""
    best = {}
    for p in probes(tiny_space()):
        size = op_table(p.sig).act.sum()
        if p.op_name not in best or size < best[p.op_name][0]:
            best[p.op_name] = (size, p)
    return [p for _, p in sorted(best.values(), key=lambda x: x[1].op_name)]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle")
    items = _representatives()
    manifest = export_bundle(out, items, target="iOS18", cache=out / "mil_cache", progress=False)
    return out, manifest, items


def test_every_op_converts_to_mlprogram(bundle):
    out, manifest, _ = bundle
    assert {e["op"] for e in manifest["probes"]} == ALL_OPS
    for e in manifest["probes"]:
        pkg = out / e["package"]
        assert (pkg / "Manifest.json").exists(), e["op"]
        assert e["mil_groups"]["total_ops"] > 0


def test_package_is_fp16_mlprogram_with_named_inputs(bundle):
    import coremltools as ct

    out, manifest, _ = bundle
    e = next(e for e in manifest["probes"] if e["op"] == "temporal:xattn1d")
    spec = ct.models.MLModel(str(out / e["package"]), skip_model_load=True).get_spec()
    assert spec.WhichOneof("Type") == "mlProgram"
    assert [i.name for i in spec.description.input] == [i["name"] for i in e["inputs"]] == ["x", "text"]
    assert manifest["precision"] == "fp16" and manifest["target"] == "iOS18"


def test_mil_features_show_layout_and_norm_lowering(bundle):
    _, manifest, _ = bundle
    by_op = {e["op"]: e for e in manifest["probes"]}
    attn = by_op["temporal:attn1d"]["mil_ops"]
    assert attn.get("transpose", 0) >= 2 and attn.get("reshape", 0) >= 2  # layout changes
    assert by_op["resnet"]["mil_ops"].get("reduce_mean", 0) >= 2  # GroupNorm has no native op
    assert by_op["temporal:conv3d"]["mil_ops"].get("conv", 0) == 1


def test_mil_features_are_cached(bundle):
    out, _, items = bundle
    cache = out / "mil_cache"
    files = list((cache / "iOS18").glob("*.json"))
    assert len(files) == len(items)
    # a cache hit does not convert again (convert would be far slower than this)
    feats = mil_features(items[0].sig, "iOS18", cache=cache)
    assert feats["ops"] and json.loads(files[0].read_text())["target"] == "iOS18"


def _load_runner(path):
    spec = importlib.util.spec_from_file_location("temponas_runner_under_test", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_runner_code_path_writes_a_valid_csv(bundle, tmp_path, monkeypatch):
    """Everything of run_on_device.py runs except the Core ML compile/load/predict calls, which
    are replaced by checks of what the runner passes them."""
    import coremltools as ct

    out, manifest, _ = bundle
    runner = _load_runner(out / "run_on_device.py")
    assert runner.COLUMNS == list(COLUMNS)
    calls = []

    def fake_compile(package):
        assert package.suffix == ".mlpackage" and package.exists()
        return package, 12.5

    def fake_load(compiled, compute_units):
        assert compute_units == "cpu_and_ne"
        spec = ct.models.MLModel(str(compiled), skip_model_load=True).get_spec()
        return {i.name: tuple(i.type.multiArrayType.shape) for i in spec.description.input}, 3.0

    def fake_predict(model, inputs):
        assert {k: v.shape for k, v in inputs.items()} == model  # names and shapes match the package
        calls.append(1)

    monkeypatch.setattr(runner, "compile_package", fake_compile)
    monkeypatch.setattr(runner, "load_model", fake_load)
    monkeypatch.setattr(runner, "predict_once", fake_predict)
    csv_path = tmp_path / "m.csv"
    assert runner.main([str(out), "--runs", "3", "--warmup", "1", "--repeats", "2",
                        "--device", "TestMac1,1", "--out", str(csv_path)]) == 0
    assert len(calls) == 2 * len(manifest["probes"]) * 4
    m = read_csv(csv_path)
    assert m.info.device == "TestMac1,1" and m.info.backend == "coreml"
    assert m.info.compute_units == "cpu_and_ne" and m.info.precision == "fp16"
    assert "coremltools=" in m.info.versions
    want = {json.dumps(e["signature"], sort_keys=True) for e in manifest["probes"]}
    got = {json.dumps(r.sig.to_dict(), sort_keys=True) for r in m.blocks}
    assert got == want and len(m.blocks) == 2 * len(want)
    assert all(r.load_ms == 3.0 and r.runs == 3 for r in m.blocks)


def test_runner_template_mode(bundle, tmp_path):
    out, manifest, _ = bundle
    runner = _load_runner(out / "run_on_device.py")
    path = tmp_path / "template.csv"
    runner.main([str(out), "--template", "--out", str(path), "--device", "iPhone17,2"])
    lines = path.read_text().splitlines()
    assert lines[0].split(",") == list(COLUMNS) and len(lines) == 1 + len(manifest["probes"])


def test_network_package_follows_the_input_contract(tmp_path):
    """A whole denoiser converts with the inputs of ``network_input_specs`` (names, shapes, in
    call order) and the output ``noise_pred``; the macOS runner feeds it values of the documented
    ranges (timesteps in [0, 1000))."""
    import coremltools as ct

    from search_space.arch import StageChoice
    from search_space.modules import NETWORK_INPUTS, NETWORK_OUTPUT, network_input_specs

    space = tiny_space()
    arch = space.arch({space.backbone.stage_ids[0]: StageChoice(TemporalKind.CONV1D, 1, 0, 3)})
    manifest = export_bundle(tmp_path, [], [(space.backbone, arch)], target="iOS18", progress=False)
    (e,) = manifest["probes"]
    want = [(n, list(s)) for n, s in network_input_specs(arch.task)]
    assert [n for n, _ in want] == list(NETWORK_INPUTS)
    assert [(i["name"], i["shape"]) for i in e["inputs"]] == want
    spec = ct.models.MLModel(str(tmp_path / e["package"]), skip_model_load=True).get_spec()
    assert [(i.name, list(i.type.multiArrayType.shape)) for i in spec.description.input] == want
    assert [o.name for o in spec.description.output] == [NETWORK_OUTPUT]
    runner = _load_runner(tmp_path / "run_on_device.py")
    feed = runner.make_inputs(e)
    assert {k: list(v.shape) for k, v in feed.items()} == dict(want)
    assert 0 <= feed["timesteps"].min() and feed["timesteps"].max() < 1000
