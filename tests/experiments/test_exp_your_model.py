"""A search on a diffusers UNet folder with its own weights (tiny, random, written by
save_pretrained): real Ray, short_train keeping its weights, then exports that carry them --
the torch one reloaded with the documented recipe reproduces the evaluation's validation loss
bit for bit; the Core ML one is palettized as the latency model priced."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
import yaml
from tiny_hf import save_tiny_unet

from experiments.cli import main
from experiments.config import load_config
from experiments.runner import SearchOptions, run_search

pytestmark = pytest.mark.usefixtures("local_ray")


def _config(tmp, unet_dir, **top):
    return {"name": "yours", "backbone": {"diffusers": str(unet_dir)},
            "task": {"num_frames": 3, "batch": 1, "text_tokens": 4},
            "space": {"defaults": {"kinds": ["none", "conv1d", "attn1d"], "heads": [4],
                                   "kernel_t": [3], "counts": [1]}},
            "evaluator": {"name": "short_train", "budget": 2, "seeds": [0], "keep_weights": True,
                          "threads": 1, "timeout_s": 300,
                          "options": {"scale": {"num_frames": 3, "latent_height": 8,
                                                "latent_width": 8, "text_tokens": 4},
                                      "data": {"num_train": 6, "num_val": 2, "patch": 2},
                                      "batch": 2, "val_timesteps": 1,
                                      "cache_dir": str(tmp / "cache")}},
            "search": {"sampler": "random", "n_trials": 3, "workers": 1, "seed": 3},
            "out": str(tmp / "runs"), **top}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("yours")
    save_tiny_unet(tmp / "unet")
    path = tmp / "yours.yaml"
    path.write_text(yaml.safe_dump(_config(tmp, tmp / "unet")))
    cfg = load_config(path)
    s = run_search(cfg, SearchOptions(progress=False, write_plots=False))
    return tmp, cfg, s


def _kept(run_dir):
    return sorted((run_dir / "weights").glob("*/s0.safetensors"))


def test_the_config_reads_the_folder(run):
    tmp, cfg, s = run
    assert cfg.backbone_spec.name == "unet" and cfg.backbone_spec.latent_channels == 4
    assert cfg.video_task.latent_height == 8  # the UNet's sample_size
    opts = cfg.evaluator_options()
    assert opts["spatial"] == "backbone" and opts["weights"] == str(tmp / "unet")
    assert opts["keep_weights"] is True
    assert s.complete == 3 and s.failed == 0
    assert _kept(s.run_dir)  # every evaluation's weights, written by the driver
    assert not (tmp / "cache" / "pretrained").exists()  # real weights: nothing pretrained


def _code_blocks(md):
    return re.findall(r"```python\n(.*?)```", md, flags=re.S)


def test_torch_export_reloads_with_the_recipe_and_reproduces_the_val_loss(run, monkeypatch):
    tmp, cfg, s = run
    kept = [p for p in _kept(s.run_dir) if p.parent.name != _image_arch(cfg)]
    aid = kept[0].parent.name
    out = tmp / "export_torch"
    assert main(["export", str(s.run_dir), "--arch-id", aid, "--format", "torch",
                 "--out", str(out)]) == 0
    metrics = json.loads((out / f"{aid}.metrics.json").read_text())
    evaluated = [json.loads(line) for line in (s.run_dir / "evaluations.jsonl").read_text().splitlines()]
    val_loss = next(r["extras"]["val_loss"] for r in evaluated if r["arch_id"] == aid)
    assert metrics["weights"]["val_loss"] == val_loss
    blocks = _code_blocks((out / "LOADING.md").read_text())
    assert len(blocks) == 2
    monkeypatch.chdir(out)
    torch.set_num_threads(1)  # as the evaluation ran (evaluator.threads)
    ns: dict = {}
    exec(blocks[0], ns)  # the documented recipe, as a user runs it
    model, arch = ns["model"], ns["arch"]
    t = arch.task
    for b in (1, 2):  # the batch size is not baked in
        lat = torch.randn(b, t.latent_channels, t.num_frames, t.latent_height, t.latent_width)
        with torch.no_grad():
            y = model(lat, torch.full((b,), 500.0), torch.randn(b, t.text_tokens, t.text_dim))
        assert y.shape == lat.shape
    exec(blocks[1], ns)  # asserts the validation loss bit for bit
    assert ns["loss"] == val_loss


def _image_arch(cfg):
    from search_space.arch import ArchConfig

    return ArchConfig.create(cfg.backbone_spec.name, cfg.video_task, {},
                             cfg.backbone_spec.stage_ids).arch_id


@pytest.mark.coreml
def test_coreml_export_is_palettized_as_priced(run):
    import coremltools as ct

    tmp, cfg, s = run
    aid = _kept(s.run_dir)[0].parent.name
    out = tmp / "export_coreml"
    assert main(["export", str(s.run_dir), "--arch-id", aid, "--format", "coreml", "--out",
                 str(out), "--palettize-mode", "uniform"]) == 0
    m = json.loads((out / f"{aid}.metrics.json").read_text())["coreml"]
    assert m["precision"] == "lut6" and m["weight_bits"] == 6 and m["priced_by"] == "iphone16pm"
    spec = ct.models.MLModel(str(out / f"{aid}.mlpackage"), skip_model_load=True).get_spec()
    assert "precision lut6" in spec.description.metadata.shortDescription
    assert spec.description.metadata.userDefined["temponas.precision"] == "lut6"
    ops = {op.type for blk in spec.mlProgram.functions["main"].block_specializations.values()
           for op in blk.operations}
    assert "constexpr_lut_to_dense" in ops  # the weights are look-up tables


@pytest.mark.parametrize("edit, fragment", [
    (lambda c, t: c.update(backbone={"diffusers": str(t / "wide")}), "wide"),
    (lambda c, t: c.update(backbone_weights=str(t / "wide")), "does not fit backbone"),
    (lambda c, t: c["task"].update(latent_channels=8), "task.latent_channels: 8 must equal"),
    (lambda c, t: c.update(backbone={"diffusers": str(t / "vae")}), "not a diffusers UNet2DCondition"),
])
def test_bad_model_input_is_one_line_exit_2_nothing_written(run, tmp_path, capsys, edit, fragment):
    tmp, _, _ = run
    if not (tmp / "wide").exists():
        save_tiny_unet(tmp / "wide", block_out_channels=(32, 128))
        (tmp / "vae").mkdir()
        (tmp / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    cfg = _config(tmp_path, tmp / "unet")
    cfg["backbone"]["weights"] = False
    edit(cfg, tmp)
    if fragment == "wide":  # a UNet whose weights are its own: fine on its own, so swap them
        shutil.copy(tmp / "unet" / "config.json", tmp_path / "config.json")
        cfg["backbone"] = {"diffusers": str(tmp_path / "config.json"), "weights": False}
        cfg["backbone_weights"] = str(tmp / "wide" / "diffusion_pytorch_model.safetensors")
        fragment = "wide/diffusion_pytorch_model.safetensors: "
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["search", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and fragment in err, err
    assert not (tmp_path / "runs").exists()


def test_space_describes_a_diffusers_folder(run, capsys):
    tmp, _, _ = run
    assert main(["space", str(tmp / "unet" / "config.json"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["backbone"] == "unet" and d["num_stages"] == 5 and d["size"] > 1
    assert main(["space", str(tmp / "unet")]) == 0
    assert "distinct architectures" in capsys.readouterr().out


def test_proxy_width_kept_weights_export_the_evaluated_network(tmp_path, monkeypatch):
    """A preset run at the proxy width (pretrained small denoiser): the full network has no
    trained temporal weights, proxy/ holds the network the evaluation ran, and its recipe
    reproduces the validation loss too."""
    cfg = _config(tmp_path, tmp_path)
    cfg.update(backbone="tiny", task={"num_frames": 3, "batch": 1})
    cfg["evaluator"]["options"]["pretrain"] = {"steps": 4, "batch": 2}
    cfg["search"]["n_trials"] = 2
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    s = run_search(load_config(path), SearchOptions(progress=False, write_plots=False))
    assert s.complete == 2
    kept = _kept(s.run_dir)[0]
    aid, out = kept.parent.name, tmp_path / "export"
    assert main(["export", str(s.run_dir), "--arch-id", aid, "--format", "torch", "--seed", "0",
                 "--out", str(out)]) == 0
    w = json.loads((out / f"{aid}.metrics.json").read_text())["weights"]
    assert "proxy" in w and w["temporal"].startswith("temporal layers zero")
    blocks = _code_blocks((out / "LOADING.md").read_text())
    monkeypatch.chdir(out / "proxy")
    torch.set_num_threads(1)
    ns: dict = {}
    exec(blocks[0], ns)
    exec(blocks[1], ns)
    assert ns["loss"] == w["val_loss"]
    assert main(["export", str(s.run_dir), "--arch-id", aid, "--format", "torch", "--seed", "5",
                 "--out", str(tmp_path / "none")]) == 2


@pytest.mark.parametrize("kind", ["preset", "inline"])
def test_loading_recipe_works_for_preset_and_inline_backbones(tmp_path, monkeypatch, kind):
    """The same recipe (backbone.json + arch + state dict) for a preset and an inline backbone
    (the old recipe looked the backbone up by preset name and failed for inline ones)."""
    from search_space.presets import get_backbone

    spec = {**get_backbone("tiny").to_dict(), "name": "my_inline"}
    cfg = {"name": "r", "backbone": "tiny" if kind == "preset" else spec,
           "task": {"num_frames": 3, "latent_height": 8, "latent_width": 8, "batch": 1},
           "evaluator": {"name": "params"}, "out": str(tmp_path / "runs"),
           "search": {"sampler": "random", "n_trials": 2, "workers": 1}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(cfg))
    s = run_search(load_config(path), SearchOptions(progress=False, write_plots=False))
    aid = next((s.run_dir / "archs").glob("*.json")).stem
    out = tmp_path / "export"
    assert main(["export", str(s.run_dir), "--arch-id", aid, "--format", "torch",
                 "--out", str(out)]) == 0
    blocks = _code_blocks((out / "LOADING.md").read_text())
    assert len(blocks) == 1  # nothing kept: no evaluation to reproduce
    monkeypatch.chdir(out)
    ns: dict = {}
    exec(blocks[0], ns)
    t = ns["arch"].task
    for b in (1, 2):
        lat = torch.randn(b, t.latent_channels, t.num_frames, t.latent_height, t.latent_width)
        with torch.no_grad():
            y = ns["model"](lat, torch.full((b,), 10.0), torch.randn(b, t.text_tokens, t.text_dim))
        assert y.shape == lat.shape
