"""Real media made by the libraries themselves, small: video files written with PyAV, frame
folders with Pillow, and tiny random diffusers/transformers models saved with save_pretrained
(a VAE, a CLIP text model with its tokenizer, a UNet). No downloads."""

from __future__ import annotations

import json
import os
import string
from pathlib import Path

import numpy as np

CODECS = {".mp4": ("libx264", "yuv420p"), ".webm": ("libvpx-vp9", "yuv420p"), ".gif": ("gif", "rgb8")}


def moving_frames(n: int, h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """``(n, h, w, 3)`` uint8: a coloured square moving over a gradient (real motion)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx / w, yy / h, np.full((h, w), rng.uniform(0.2, 0.8))], -1)
    color = rng.uniform(0.3, 1.0, 3)
    out = np.empty((n, h, w, 3), np.uint8)
    x0, y0, vx, vy, s = rng.uniform(0, w / 2), rng.uniform(0, h / 2), rng.uniform(1, 3), rng.uniform(-2, 2), h // 3
    for t in range(n):
        f = base.copy()
        x, y = int(x0 + vx * t) % (w - s), int(y0 + vy * t) % (h - s)
        f[y:y + s, x:x + s] = color
        out[t] = (f * 255).astype(np.uint8)
    return out


def write_video(path: str | Path, frames: np.ndarray, fps: int = 8) -> str:
    """Encode ``frames (n, h, w, 3)`` uint8 with PyAV; the container follows the suffix."""
    import av

    path = str(path)
    codec, pix = CODECS[os.path.splitext(path)[1]]
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with av.open(path, "w") as c:
        st = c.add_stream(codec, rate=fps)
        st.height, st.width = frames.shape[1:3]
        st.pix_fmt = pix
        for f in frames:
            for pkt in st.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                c.mux(pkt)
        for pkt in st.encode():
            c.mux(pkt)
    return path


def write_frames_dir(path: str | Path, frames: np.ndarray, ext: str = ".png") -> str:
    from PIL import Image

    os.makedirs(path, exist_ok=True)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(os.path.join(path, f"frame_{i}{ext}"))  # natural order: 2 < 10
    return str(path)


def tiny_vae(path: str | Path, latent_channels: int = 4, levels: int = 4, seed: int = 0) -> str:
    """A random diffusers AutoencoderKL: ``2**(levels-1)`` pixels per latent."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * levels,
                        up_block_types=("UpDecoderBlock2D",) * levels, block_out_channels=(8,) * levels,
                        layers_per_block=1, latent_channels=latent_channels, norm_num_groups=4,
                        sample_size=64)
    vae.save_pretrained(str(path))
    return str(path)


def _clip_vocab() -> tuple[dict[str, int], list[str]]:
    chars = list(string.ascii_lowercase + string.digits)
    toks = chars + [c + "</w>" for c in chars]
    merges = ["t h", "th e</w>", "a n", "an d</w>"]
    toks += ["th", "the</w>", "an", "and</w>", "<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(toks)}, merges


def tiny_clip(path: str | Path, hidden: int = 32, tokenizer_subdir: bool = False, seed: int = 0) -> str:
    """A random transformers CLIPTextModel and its CLIPTokenizer (vocab.json + merges.txt
    written here) in ``path`` (or ``path/tokenizer/``)."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab, merges = _clip_vocab()
    tok_dir = os.path.join(path, "tokenizer") if tokenizer_subdir else str(path)
    os.makedirs(tok_dir, exist_ok=True)
    with open(os.path.join(tok_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f)
    with open(os.path.join(tok_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(os.path.join(tok_dir, "vocab.json"), os.path.join(tok_dir, "merges.txt"))
    tok.save_pretrained(tok_dir)
    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16,
                         bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                         pad_token_id=vocab["<|endoftext|>"])
    CLIPTextModel(cfg).save_pretrained(str(path))
    return str(path)


def tiny_unet(path: str | Path, seed: int = 0) -> str:
    """A random diffusers UNet2DConditionModel with the layout of the ``tiny`` preset
    (channels 32/64, one ResNet per down stage, 32-d text, 8 norm groups)."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4,
                                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                                block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
                                attention_head_dim=(2, 4), norm_num_groups=8)
    unet.save_pretrained(str(path))
    return str(path)


def tiny_pipeline(path: str | Path, seed: int = 0) -> str:
    """An SD-1.5-style pipeline folder at test size: ``unet/`` (the ``tiny`` layout), ``vae/``
    (4 latent channels, 8 pixels per latent), ``text_encoder/`` (32-d CLIP) and ``tokenizer/``."""
    tiny_unet(os.path.join(path, "unet"), seed)
    tiny_vae(os.path.join(path, "vae"), latent_channels=4, levels=4, seed=seed)
    tiny_clip(os.path.join(path, "text_encoder"), hidden=32, seed=seed)
    tok = os.path.join(path, "tokenizer")  # the pipeline layout: the tokenizer next to the model
    os.makedirs(tok, exist_ok=True)
    for f in os.listdir(os.path.join(path, "text_encoder")):
        if f != "config.json" and not f.endswith(".safetensors"):
            os.replace(os.path.join(path, "text_encoder", f), os.path.join(tok, f))
    return str(path)


WORDS = ("red", "green", "blue", "square", "moves", "left", "right", "up", "down", "slowly", "fast")


def write_clips(path: str | Path, n: int = 12, frames: int = 12, n_val: int = 3) -> str:
    """``n`` mp4 clips (64x48, ``frames`` frames) and ``manifest.csv`` (path, caption, split:
    the last ``n_val`` are validation clips); returns the manifest's path."""
    rows = ["path,caption,split"]
    for i in range(n):
        rel = f"videos/clip_{i:02d}.mp4"
        write_video(os.path.join(path, rel), moving_frames(frames, seed=i))
        words = [WORDS[(i + k) % len(WORDS)] for k in range(0, 9, 3)]
        rows.append(f"{rel},a {' '.join(words)} number {i},{'val' if i >= n - n_val else 'train'}")
    manifest = os.path.join(path, "manifest.csv")
    with open(manifest, "w", encoding="utf-8") as f:
        f.write("\n".join(rows) + "\n")
    return manifest


#: the acceptance's backbone: the saved ``unet/`` with its weights (``{diffusers: DIR, weights:
#: true}``: its config becomes the backbone, its weights the frozen spatial layers, nothing is
#: pretrained) when True; the ``tiny`` preset (the same layout, pretrained on the clips) when False.
DIFFUSERS_BACKBONE = True


def acceptance_config(model: str, manifest: str, cache: str) -> dict:
    """The one experiment config of the issue-12 acceptance (a ``short_train`` search on the
    pipeline of :func:`tiny_pipeline` and the clips of :func:`write_clips`); backbone: see
    :data:`DIFFUSERS_BACKBONE`."""
    return {
        "name": "your_model",
        "backbone": {"diffusers": f"{model}/unet", "weights": True} if DIFFUSERS_BACKBONE else "tiny",
        "task": {"latent_channels": 4, "num_frames": 4, "latent_height": 8, "latent_width": 8,
                 "text_tokens": 8},
        "space": {"defaults": {"kinds": ["none", "conv1d", "attn1d"], "heads": [2], "kernel_t": [3]}},
        "latency_model": "iphone16pm",
        "evaluator": {"name": "short_train", "budget": 2, "seeds": [0], "timeout_s": 300, "options": {
            "scale": {"width_mult": 1.0, "num_frames": 4, "latent_height": 8, "latent_width": 8,
                      "text_tokens": 8},
            "data": {"source": "clips", "path": manifest, "vae": f"{model}/vae",
                     "text_encoder": f"{model}/text_encoder", "num_train": 9, "num_val": 3},
            "pretrain": {"steps": 6, "batch": 2}, "batch": 3, "val_timesteps": 1,
            "cache_results": False,  # the second run evaluates again: it must find the data cached
            "cache_dir": cache}},
        "search": {"sampler": "random", "n_trials": 4, "workers": 1, "seed": 0},
    }
