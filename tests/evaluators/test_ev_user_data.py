"""Your clips through your VAE and text encoder: what data_splits returns, the on-disk cache
(encoded once, shared by processes), the data key in every cache key, and the errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from tiny_media import moving_frames, tiny_clip, tiny_vae, write_video

from common.errors import ConfigError
from common.fsio import read_jsonl
from evaluators import _user_data
from evaluators._clips import hash_split, list_clips
from evaluators._pretrain import pretrain_key
from evaluators._torch_setup import TorchOptions, data_key, data_scoring, data_splits, user_data
from evaluators.options import parse_options
from evaluators.registry import create_evaluator
from search_space.presets import get_backbone

SCALE = {"width_mult": 1.0, "num_frames": 3, "latent_height": 4, "latent_width": 4, "text_tokens": 6}
NAMES = [f"clip{i:02d}.mp4" for i in range(8)]  # with val_fraction 0.3: 6 train, 2 val (by hash)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("user_data")
    for i, n in enumerate(NAMES):
        write_video(d / "clips" / n, moving_frames(8, 40, 56, seed=i))
        (d / "clips" / n).with_suffix(".txt").write_text(f"the square {i} moves and turns")
    tiny_vae(d / "vae", latent_channels=4, levels=3)            # 4 pixels per latent
    tiny_clip(d / "te", hidden=32, tokenizer_subdir=True)
    return d


def _opts(media, cache, **data) -> TorchOptions:
    d = {"source": "clips", "path": str(media / "clips"), "vae": str(media / "vae"),
         "text_encoder": str(media / "te"), "val_fraction": 0.3, **data}
    return parse_options(TorchOptions, {"scale": SCALE, "data": d, "cache_dir": str(cache)}, "o")


def _fresh_process_state():
    """Forget what this process memoized (a new Ray worker starts like this)."""
    _user_data._SPLITS.clear()
    _user_data._KEYS.clear()
    from common import hashing
    hashing._MEMO.clear()


def test_clips_through_the_vae_and_clip_text_model(media, tmp_path):
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer

    _fresh_process_state()
    o = _opts(media, tmp_path)
    train, val = data_splits(get_backbone("tiny"), o, 4)
    assert [hash_split(n, 0.3) for n in NAMES].count("val") == 2
    assert train.latents.shape == (6, 4, 3, 4, 4) and val.latents.shape == (2, 4, 3, 4, 4)
    assert train.text.shape == (6, 6, 32) and train.pixels is None
    clips = {c.rel: c for c in list_clips(str(media / "clips"), 0.3)}
    assert set(val.sources) == {r for r, c in clips.items() if c.split == "val"}
    # latents = posterior mean x scaling factor of 16x16 centre crops (40x56 frames scaled to 16x22)
    from evaluators._clips import decode_windows
    rel = train.sources[0]
    px = decode_windows(clips[rel], 3, 1, 1, (16, 16), "crop")[0]
    vae = AutoencoderKL.from_pretrained(str(media / "vae"))
    x = torch.from_numpy(px).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        want = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
    assert torch.allclose(train.latents[0].transpose(0, 1), want, atol=1e-5)
    # text = CLIP last_hidden_state of the caption padded to the task's tokens; tokenizer/ subdir
    tok = CLIPTokenizer.from_pretrained(str(media / "te" / "tokenizer"))
    ids = tok([clips[rel].caption], padding="max_length", max_length=6, truncation=True,
              return_tensors="pt").input_ids
    with torch.no_grad():
        emb = CLIPTextModel.from_pretrained(str(media / "te"))(ids).last_hidden_state[0]
    assert torch.allclose(train.text[0], emb, atol=1e-5)


def test_encoded_once_then_read_from_the_cache(media, tmp_path):
    _fresh_process_state()
    o = _opts(media, tmp_path)
    first = user_data(get_backbone("tiny"), o, 4)
    assert (first.info["encoded"], first.info["reused"]) == (8, 0)
    _fresh_process_state()
    again = user_data(get_backbone("tiny"), o, 4)
    assert (again.info["encoded"], again.info["reused"]) == (0, 8)
    assert torch.equal(first.train.latents, again.train.latents)
    assert torch.equal(first.val.text, again.val.text)
    events = [r for _, r in read_jsonl(os.path.join(first.info["store"], "events.jsonl"))]
    assert [(e["encoded"], e["reused"]) for e in events] == [(8, 0), (0, 8)]
    # one more clip: only it is encoded; the store lists shards + a JSON index
    write_video(media / "clips" / "zz_new.mp4", moving_frames(8, 40, 56, seed=99))
    try:
        _fresh_process_state()
        more = user_data(get_backbone("tiny"), _opts(media, tmp_path), 4)
        assert more.info["encoded"] == 1 and more.info["reused"] == 8
    finally:
        os.remove(media / "clips" / "zz_new.mp4")
    store = more.info["store"]
    idx = json.loads(open(os.path.join(store, "index.json")).read())
    assert idx["encoded"] == 9 and len(idx["entries"]) == 9
    assert sorted(f for f in os.listdir(store) if f.endswith(".safetensors")) == [
        "shard-000000.safetensors", "shard-000001.safetensors"]


def test_concurrent_processes_encode_once(media, tmp_path):
    """Two processes (as two Ray workers) ask for the same clips at once: one encodes, the other
    waits on the store's lock and reads (fixed encoding: no model import in the children)."""
    opts = {"scale": SCALE, "data": {"source": "clips", "path": str(media / "clips"), "val_fraction": 0.3,
                                     "patch": 4}, "cache_dir": str(tmp_path)}
    code = ("from evaluators._torch_setup import TorchOptions, user_data; "
            "from evaluators.options import parse_options; from search_space.presets import get_backbone; "
            f"o = parse_options(TorchOptions, {opts!r}, 'o'); "
            "print(user_data(get_backbone('tiny'), o, 4).info['encoded'])")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outs = sorted(int(p.communicate(timeout=120)[0].split()[-1]) for p in procs)
    assert outs == [0, 8]


def test_data_key_follows_content_not_place(media, tmp_path):
    bb = get_backbone("tiny")
    _fresh_process_state()
    o = _opts(media, tmp_path / "c1")
    k0, pk0 = data_key(o), pretrain_key(bb, o, 4)
    ev_opts = {"scale": SCALE, "data": dict(source="clips", path=str(media / "clips"), vae=str(media / "vae"),
                                            text_encoder=str(media / "te"), val_fraction=0.3),
               "cache_dir": str(tmp_path / "c1")}
    ck0 = create_evaluator("short_train", bb, ev_opts).config_key
    assert data_scoring(o) == {"source": "clips", "key": k0}
    _fresh_process_state()
    assert data_key(_opts(media, tmp_path / "c2", cache_dir=str(tmp_path / "d2"))) == k0  # non-scoring
    _fresh_process_state()
    assert data_key(_opts(media, tmp_path / "c1", stride=2)) != k0
    assert data_key(_opts(media, tmp_path / "c1", vae="")) != k0
    # a clip's content changes (same name, same size would not matter: content is hashed)
    p = media / "clips" / NAMES[0]
    old = p.read_bytes()
    try:
        write_video(p, moving_frames(8, 40, 56, seed=1234))
        _fresh_process_state()
        o2 = _opts(media, tmp_path / "c1")
        assert data_key(o2) != k0
        assert pretrain_key(bb, o2, 4) != pk0  # a second dataset pretrains its own backbone
        assert create_evaluator("short_train", bb, ev_opts).config_key != ck0
    finally:
        p.write_bytes(old)
    # the bundled data keeps the key it always had: its four options
    b = parse_options(TorchOptions, {"data": {"num_train": 5, "seed": 3}}, "o")
    assert data_scoring(b) == {"num_train": 5, "num_val": 32, "seed": 3, "patch": 8}


def test_fixed_encoding_and_word_table_without_models(media, tmp_path):
    _fresh_process_state()
    o = _opts(media, tmp_path, vae="", text_encoder="", patch=4, windows=2, num_train=7, num_val=2)
    u = user_data(get_backbone("tiny"), o, 4)
    assert u.train.latents.shape == (7, 4, 3, 4, 4) and u.val.latents.shape == (2, 4, 3, 4, 4)
    assert abs(float(u.train.latents.std()) - 1) < 0.3 and u.channel_std.shape == (4,)
    assert u.train.sources[0].endswith("#0") and u.train.sources[1].endswith("#1")
    assert torch.equal(u.train.text[0], u.train.text[1])  # same clip, same caption


def test_precomputed_embeddings_by_path_or_caption(media, tmp_path):
    from safetensors.torch import save_file

    clips = list_clips(str(media / "clips"), 0.3)
    emb = {c.rel: torch.full((8, 32), float(i)) for i, c in enumerate(clips[1:])}
    emb[clips[0].caption] = torch.full((1, 10, 32), -1.0)
    save_file(emb, str(tmp_path / "emb.safetensors"))
    _fresh_process_state()
    o = _opts(media, tmp_path, text_encoder="", embeddings=str(tmp_path / "emb.safetensors"))
    train, val = data_splits(get_backbone("tiny"), o, 4)
    got = dict(zip(train.sources + val.sources, torch.cat([train.text, val.text])))
    assert torch.equal(got[clips[0].rel], torch.full((6, 32), -1.0))
    assert torch.equal(got[clips[3].rel], torch.full((6, 32), 2.0))
    save_file({"x": torch.zeros(8, 16)}, str(tmp_path / "bad.safetensors"))
    _fresh_process_state()
    with pytest.raises(ConfigError, match=r"bad\.safetensors: no embedding named 'clip"):
        data_splits(get_backbone("tiny"), _opts(media, tmp_path, text_encoder="",
                                                embeddings=str(tmp_path / "bad.safetensors")), 4)


def test_precomputed_latents_file(tmp_path):
    from safetensors.torch import save_file

    t = {"train.latents": torch.randn(5, 4, 3, 4, 4), "train.text": torch.randn(5, 6, 32),
         "val.latents": torch.randn(2, 4, 3, 4, 4), "val.text": torch.randn(2, 6, 32)}
    save_file(t, str(tmp_path / "lat.safetensors"))
    o = parse_options(TorchOptions, {"scale": SCALE, "data": {"source": "latents", "num_train": 4,
                      "path": str(tmp_path / "lat.safetensors")}}, "o")
    train, val = data_splits(get_backbone("tiny"), o, 4)
    assert torch.equal(train.latents, t["train.latents"][:4]) and torch.equal(val.text, t["val.text"])
    with pytest.raises(ConfigError, match=r"lat\.safetensors: train\.latents has shape \(5, 4, 3, 4, 4\), "
                                          r"expected \(N, 8, 3, 4, 4\)"):
        data_splits(get_backbone("tiny"), o, 8)


def test_encoder_mismatches_are_one_line_errors_naming_the_config(media, tmp_path):
    _fresh_process_state()
    with pytest.raises(ConfigError, match=r"vae/config\.json: latent_channels 4 != the backbone's input "
                                          r"channels 8 \(task\.latent_channels\)"):
        data_splits(get_backbone("tiny"), _opts(media, tmp_path), 8)
    o = parse_options(TorchOptions, {"scale": {**SCALE, "width_mult": 0.5}, "data": {
        "source": "clips", "path": str(media / "clips"), "text_encoder": str(media / "te")},
        "cache_dir": str(tmp_path)}, "o")
    with pytest.raises(ConfigError, match=r"te/config\.json: hidden_size 32 != the backbone's "
                                          r"cross-attention dim 16 at scale\.width_mult 0\.5"):
        data_splits(get_backbone("tiny"), o, 4)
    with pytest.raises(ConfigError, match=r"te/config\.json: _class_name is None, expected 'AutoencoderKL'"):
        data_splits(get_backbone("tiny"), _opts(media, tmp_path, vae=str(media / "te")), 4)
    with pytest.raises(ConfigError, match=r"data\.vae: needs data\.source: clips"):
        parse_options(TorchOptions, {"data": {"vae": str(media / "vae")}}, "o")
    with pytest.raises(ConfigError, match=r"data\.path: required with data\.source: clips"):
        parse_options(TorchOptions, {"data": {"source": "clips"}}, "o")


def test_bad_clips_fail_with_the_file_or_are_skipped_with_a_count(media, tmp_path, capsys):
    bad = tmp_path / "clips"
    for n in NAMES:
        os.makedirs(bad, exist_ok=True)
        os.link(media / "clips" / n, bad / n)
    (bad / "zz_broken.mp4").write_bytes(b"\x00garbage" * 64)
    write_video(bad / "zz_short.mp4", moving_frames(2))
    _fresh_process_state()
    o = _opts(media, tmp_path / "c", path=str(bad), val_fraction=0.2)
    with pytest.raises(ConfigError, match=r"zz_(broken|short)\.mp4: .* \(and 1 more unusable clips\); "
                                          r"data\.skip_bad: true skips unusable clips"):
        data_splits(get_backbone("tiny"), o, 4)
    _fresh_process_state()
    u = user_data(get_backbone("tiny"), _opts(media, tmp_path / "c", path=str(bad), val_fraction=0.2,
                                              skip_bad=True), 4)
    assert u.info["skipped"] == 2 and u.info["encoded"] == 0  # the good ones were kept in the cache
    assert not any("zz_" in s for s in u.train.sources + u.val.sources)
    assert "warning: data: skipped 2 of 10 clips (data.skip_bad); first: " in capsys.readouterr().err


def test_preview_decodes_latents_through_the_vae(media, tmp_path):
    from evaluators import preview_frames

    _fresh_process_state()
    opts = {"scale": SCALE, "data": {"source": "clips", "path": str(media / "clips"),
                                     "vae": str(media / "vae"), "val_fraction": 0.3},
            "cache_dir": str(tmp_path)}
    raw, src, g = preview_frames(get_backbone("tiny"), opts, split="val", n=2)
    dec, src2, _ = preview_frames(get_backbone("tiny"), opts, split="val", n=2, decoded=True)
    assert raw.shape == dec.shape == (2, 3, 16, 16, 3) and dec.dtype == np.uint8
    assert src == src2 and g.patch == 4
