"""Your data behind ``data_splits``: clips encoded by your VAE and text encoder (cached on disk),
or precomputed latents; and the data's identity (``data_key``) for every cache key.

``source: clips``: the clips of ``data.path`` (:mod:`evaluators._clips`) are split by file, at
most ``num_train`` / ``num_val`` videos per split are taken (files in the order of the hash of
their path: a fixed pseudo-random subset), each file gives ``windows`` videos of the task's
frame count, resized to the task's latent size x the VAE's downsampling factor. Latents and
text embeddings come from the store of :mod:`evaluators._datacache` (encoded once, whoever
asks). ``source: latents``: ``data.path`` is a safetensors file holding ``train.latents``
``(N, C, T, H, W)``, ``train.text`` ``(N, tokens, dim)``, ``val.latents`` and ``val.text``.

Torch-free options in, :class:`~evaluators.data.VideoSet` out; the options object is duck-typed
(``evaluators._torch_setup.DataOptions``) so this module does not import its caller.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from common.errors import ConfigError
from common.hashing import FileHashes
from evaluators._clips import TRAIN, VAL, BadClip, Clip, decode_windows, list_clips
from evaluators._datacache import TensorStore, digest, tree_hash
from evaluators._encoders import (
    ClipText,
    EmbeddingsFile,
    VaeEncoder,
    model_files,
    text_info,
    vae_info,
    word_table_text,
)
from evaluators.data import VideoGeometry, VideoSet, decode, encode

CLIPS_VERSION = "clips-1"
_KEYS: dict[tuple, str] = {}
_SPLITS: dict[tuple, UserData] = {}
_WARNED: set[str] = set()


@dataclass(frozen=True)
class UserData:
    """Both splits, the channel std that normalized fixed-encoding latents (None with a VAE),
    and what happened (clips used/skipped, encoded/reused)."""

    train: VideoSet
    val: VideoSet
    channel_std: torch.Tensor | None
    info: dict[str, Any] = field(default_factory=dict)


def data_cache_dir(data, root: str) -> str:
    return os.path.abspath(os.path.expanduser(data.cache_dir)) if data.cache_dir else os.path.join(root, "data")


def pixels_per_latent(data) -> int:
    """Pixels per latent: the VAE's downsampling factor, else ``data.patch``."""
    return vae_info(data.vae).factor if data.vae else data.patch


def _files_key(clip: Clip, hashes: FileHashes) -> str:
    return tree_hash([(os.path.basename(f) if clip.frames_dir else "", f) for f in clip.files()], hashes)


def _select(data) -> dict[str, list[Clip]]:
    """The files each split uses (hash order, as many as the ``num_*`` videos need)."""
    clips = list_clips(data.path, data.val_fraction)
    out = {}
    for split, cap in ((TRAIN, data.num_train), (VAL, data.num_val)):
        pool = sorted((c for c in clips if c.split == split), key=lambda c: digest(c.rel, 32))
        if not pool:
            raise ConfigError(f"data.path: {data.path}: no {'validation' if split == VAL else 'training'} "
                              f"clips among {len(clips)} (split by the hash of each path with "
                              f"val_fraction {data.val_fraction:g}; a manifest's split column "
                              f"sets it per file)")
        out[split] = pool[:math.ceil(cap / data.windows)]
    return out


def _bar(items: list, desc: str):
    """A progress bar on a terminal only (the first hashing of many large clips takes a while);
    quiet in Ray workers and logs."""
    from tqdm import tqdm

    return tqdm(items, desc=desc, leave=False, mininterval=2.0, disable=None)


def _model_hash(d: str, hashes: FileHashes, extra: str = "") -> str:
    files = model_files(d)
    if extra and extra != d:
        files += [(f"tokenizer/{n}", p) for n, p in model_files(extra)]
    return tree_hash(files, hashes)


def data_key(data, root: str) -> str:
    """The identity of the data (content hashes of the clips used, the options that shape
    them, the encoders' weight hashes): 16 hex; computed once per process."""
    k = (data, root)
    if k not in _KEYS:
        _KEYS[k] = digest(data_identity(data, root))
    return _KEYS[k]


def data_identity(data, root: str) -> dict[str, Any]:
    from evaluators.data import DATA_VERSION

    if data.source == "bundled":
        return {"source": "bundled", "version": DATA_VERSION, "num_train": data.num_train,
                "num_val": data.num_val, "seed": data.seed, "patch": data.patch}
    hashes = FileHashes(data_cache_dir(data, root))
    try:
        if data.source == "latents":
            return {"source": "latents", "file": hashes.sha256(data.path), "num_train": data.num_train,
                    "num_val": data.num_val}
        sel = _select(data)
        ident: dict[str, Any] = {
            "source": "clips", "version": CLIPS_VERSION,
            "clips": {s: [[c.rel, _files_key(c, hashes), c.caption] for c in _bar(cs, f"hashing {s} clips")]
                      for s, cs in sel.items()},
            "num_train": data.num_train, "num_val": data.num_val, "stride": data.stride,
            "windows": data.windows, "resize": data.resize}
        if data.vae:
            ident["vae"] = _model_hash(vae_info(data.vae).dir, hashes)
        else:
            ident["patch"] = data.patch
        if data.text_encoder:
            ti = text_info(data.text_encoder)
            ident["text_encoder"] = _model_hash(ti.dir, hashes, ti.tokenizer_dir)
        if data.embeddings:
            ident["embeddings"] = hashes.sha256(EmbeddingsFile(data.embeddings).path)
    finally:
        hashes.save()
    return ident


# ---- loading ----------------------------------------------------------------------------------
def user_splits(data, root: str, geom: VideoGeometry, progress: bool | None = None,
                device: str = "cpu") -> UserData:
    """Both splits of ``source: clips`` or ``latents`` at ``geom`` (memoized per process)."""
    k = (data, root, geom)
    if k not in _SPLITS:
        if data.source == "latents":
            _SPLITS[k] = _latent_file(data, geom)
        else:
            _SPLITS[k] = _clip_splits(data, root, geom, progress, device)
    return _SPLITS[k]


def check_encoders(data, geom: VideoGeometry, hint: str = "") -> None:
    """VAE latent channels vs. the backbone's input channels, text width vs. its
    cross-attention width: one line naming the config file when they differ."""
    if data.vae:
        v = vae_info(data.vae)
        if v.latent_channels != geom.latent_channels:
            raise ConfigError(f"{v.config_path}: latent_channels {v.latent_channels} != the backbone's "
                              f"input channels {geom.latent_channels} (task.latent_channels)")
    if data.text_encoder:
        t = text_info(data.text_encoder)
        if t.dim != geom.text_dim:
            raise ConfigError(f"{t.config_path}: hidden_size {t.dim} != the backbone's cross-attention "
                              f"dim {geom.text_dim}{hint}")
        if geom.text_tokens > t.max_tokens:
            raise ConfigError(f"{t.config_path}: max_position_embeddings {t.max_tokens} < the task's "
                              f"{geom.text_tokens} text tokens (scale.text_tokens)")


def _clip_splits(data, root: str, geom: VideoGeometry, progress: bool | None, device: str) -> UserData:
    check_encoders(data, geom)
    sel = _select(data)
    cache = data_cache_dir(data, root)
    hashes = FileHashes(cache)
    hw = (geom.latent_height * pixels_per_latent(data), geom.latent_width * pixels_per_latent(data))
    shape = {"frames": geom.num_frames, "stride": data.stride, "windows": data.windows,
             "hw": list(hw), "resize": data.resize}
    keys = {c.rel: digest({**shape, "content": _files_key(c, hashes)}, 32)
            for cs in sel.values() for c in cs}
    if data.vae:
        vinfo = vae_info(data.vae)
        enc_id, vae = f"vae-{_model_hash(vinfo.dir, hashes)[:16]}", VaeEncoder(vinfo, device)
    else:
        enc_id, vae = f"patch-{data.patch}", None
    hashes.save()
    store = TensorStore(cache, "latents", {"encoder": enc_id, "channels": geom.latent_channels,
                                          "latent_hw": [geom.latent_height, geom.latent_width],
                                          "version": CLIPS_VERSION})
    by_key = {keys[c.rel]: c for cs in sel.values() for c in cs}

    def build(missing: list[str]):
        from tqdm import tqdm

        for key in tqdm(missing, desc=f"encoding clips ({enc_id})", leave=False, mininterval=2.0,
                        disable=None if progress is None else not progress):  # None: on a terminal
            clip = by_key[key]
            try:
                frames = decode_windows(clip, geom.num_frames, data.stride, data.windows, hw, data.resize)
            except BadClip as e:
                yield key, str(e)
                continue
            yield key, (vae.encode(frames) if vae is not None else
                        encode(frames.astype("float32") / 255.0, geom.latent_channels, data.patch))

    got = store.fetch(list(by_key), build)
    _report_bad(data, got.bad, len(by_key))
    text = _text(data, root, geom, [c for cs in sel.values() for c in cs], device)
    sets, std = _assemble(data, sel, keys, got.tensors, text, normalize=vae is None)
    info = {"clips": len(by_key), "skipped": len(got.bad), "encoded": got.encoded, "reused": got.reused,
            "store": store.dir, "encoder": enc_id}
    return UserData(sets[TRAIN], sets[VAL], std, info)


def _report_bad(data, bad: dict[str, str], total: int) -> None:
    if not bad:
        return
    first = sorted(bad.values())[0]
    if not data.skip_bad:
        more = f" (and {len(bad) - 1} more unusable clips)" if len(bad) > 1 else ""
        raise BadClip(f"{first}{more}; data.skip_bad: true skips unusable clips")
    msg = f"data: skipped {len(bad)} of {total} clips (data.skip_bad); first: {first}"
    if msg not in _WARNED:
        _WARNED.add(msg)
        print(f"warning: {msg}", file=sys.stderr)


def _text(data, root: str, geom: VideoGeometry, clips: list[Clip], device: str) -> dict[str, torch.Tensor]:
    """Text embedding ``(tokens, dim)`` per clip (by relative path)."""
    L, D = geom.text_tokens, geom.text_dim
    if data.embeddings:
        emb = EmbeddingsFile(data.embeddings)
        return {c.rel: emb.lookup(c.rel, c.caption, L, D) for c in clips}
    if not data.text_encoder:
        return {c.rel: word_table_text(c.caption, L, D) for c in clips}
    ti = text_info(data.text_encoder)
    hashes = FileHashes(data_cache_dir(data, root))
    enc_id = f"clip-{_model_hash(ti.dir, hashes, ti.tokenizer_dir)[:16]}"
    hashes.save()
    store = TensorStore(data_cache_dir(data, root), "text", {"encoder": enc_id, "tokens": L, "dim": D,
                                                              "version": CLIPS_VERSION})
    caps = {digest(c.caption, 32): c.caption for c in clips}
    model = ClipText(ti, device)

    def build(missing: list[str]):
        for s in range(0, len(missing), 32):
            chunk = missing[s:s + 32]
            yield from zip(chunk, model.encode([caps[k] for k in chunk], L))

    got = store.fetch(list(caps), build)
    return {c.rel: got.tensors[digest(c.caption, 32)] for c in clips}


def _assemble(data, sel, keys, latents, text, normalize: bool) -> tuple[dict[str, VideoSet], torch.Tensor | None]:
    parts: dict[str, tuple[list, list, list, list]] = {}
    for split, clips in sel.items():
        zs, ts, srcs, caps = [], [], [], []
        for c in clips:
            z = latents.get(keys[c.rel])
            if z is None:  # skipped (unusable)
                continue
            for w in range(z.shape[0]):
                zs.append(z[w])
                ts.append(text[c.rel])
                srcs.append(c.rel if z.shape[0] == 1 else f"{c.rel}#{w}")
                caps.append(c.caption)
        cap = data.num_train if split == TRAIN else data.num_val
        if not zs:
            raise ConfigError(f"data.path: {data.path}: no usable {split} clips left after skipping "
                              f"unusable ones")
        parts[split] = (zs[:cap], ts[:cap], srcs[:cap], caps[:cap])
    std = None
    if normalize:
        z = torch.stack(parts[TRAIN][0])
        std = z.transpose(0, 1).reshape(z.shape[1], -1).std(dim=1).clamp_min(1e-6)
    sets = {}
    for split, (zs, ts, srcs, caps) in parts.items():
        z = torch.stack(zs)
        if std is not None:
            z = z / std.view(1, -1, 1, 1, 1)
        sets[split] = VideoSet(latents=z, text=torch.stack(ts), pixels=None, sources=tuple(srcs),
                               captions=tuple(caps))
    return sets, std


def preview(data, root: str, geom: VideoGeometry, split: str, n: int, decoded: bool
            ) -> tuple[np.ndarray, tuple[str, ...]]:
    """``(frames (n, T, h, w, 3) uint8, sources)`` of the first ``n`` videos of ``split``: the
    clips decoded again, or (``decoded``) their latents through the VAE's decoder / the inverse
    of the fixed encoding."""
    if data.source == "latents":
        raise ConfigError(f"data.path: {data.path}: precomputed latents have no pixels and no "
                          f"decoder to show them with")
    split = VAL if split in (VAL, "validation") else TRAIN
    if decoded:
        u = user_splits(data, root, geom)
        v = u.train if split == TRAIN else u.val
        z = v.latents[:n]
        if data.vae:
            return VaeEncoder(vae_info(data.vae)).decode(z), v.sources[:n]
        return (decode(z, u.channel_std, data.patch) * 255 + 0.5).astype(np.uint8), v.sources[:n]
    hw = (geom.latent_height * pixels_per_latent(data), geom.latent_width * pixels_per_latent(data))
    frames, sources = [], []
    for c in _select(data)[split]:
        try:
            x = decode_windows(c, geom.num_frames, data.stride, data.windows, hw, data.resize)
        except BadClip:
            if not data.skip_bad:
                raise
            continue
        frames += list(x)
        sources += [c.rel if len(x) == 1 else f"{c.rel}#{w}" for w in range(len(x))]
        if len(frames) >= n:
            break
    return np.stack(frames[:n]), tuple(sources[:n])


def _latent_file(data, geom: VideoGeometry) -> UserData:
    from safetensors import SafetensorError, safe_open

    want = {"latents": (geom.latent_channels, geom.num_frames, geom.latent_height, geom.latent_width),
            "text": (geom.text_tokens, geom.text_dim)}
    if not os.path.isfile(data.path):
        raise ConfigError(f"data.path: {data.path}: no such file (source: latents wants a safetensors file)")
    out = {}
    try:
        with safe_open(data.path, framework="pt") as f:
            names = set(f.keys())
            for split, cap in ((TRAIN, data.num_train), (VAL, data.num_val)):
                for kind, shape in want.items():
                    name = f"{split}.{kind}"
                    if name not in names:
                        raise ConfigError(f"{data.path}: no tensor {name!r} (has: {', '.join(sorted(names))})")
                    t = f.get_tensor(name).float()
                    if tuple(t.shape[1:]) != shape:
                        raise ConfigError(f"{data.path}: {name} has shape {tuple(t.shape)}, expected "
                                          f"(N, {', '.join(map(str, shape))}) for this task")
                    out[name] = t[:cap]
    except SafetensorError as e:
        raise ConfigError(f"{data.path}: not a safetensors file ({e})") from None
    sets = {}
    for split in (TRAIN, VAL):
        z, t = out[f"{split}.latents"], out[f"{split}.text"]
        if len(z) != len(t):
            raise ConfigError(f"{data.path}: {split}.latents has {len(z)} videos, {split}.text {len(t)}")
        sets[split] = VideoSet(latents=z, text=t, pixels=None,
                               sources=tuple(f"{split}[{i}]" for i in range(len(z))), captions=("",) * len(z))
    return UserData(sets[TRAIN], sets[VAL], None, {"clips": len(sets[TRAIN]) + len(sets[VAL])})
