"""Bundled real video data for proxies and short training: no downloads, deterministic.

Sources (all ship inside our dependencies):

============================  =========  =====  ==========================================
source                        kind       split  file
============================  =========  =====  ==========================================
``grace_hopper``              photo      train  matplotlib ``sample_data/grace_hopper.jpg``
``china``                     photo      train  scikit-learn ``datasets/images/china.jpg``
``minduka``                   photo      train  matplotlib ``Minduka_Present_Blue_Pack.png``
``jacksboro_fault_dem``       terrain    train  matplotlib ``jacksboro_fault_dem.npz``
``digits_train``              digits     train  scikit-learn ``load_digits()`` images 0..1199
``flower``                    photo      val    scikit-learn ``datasets/images/flower.jpg``
``topobathy``                 terrain    val    matplotlib ``topobathy.npz``
``digits_val``                digits     val    scikit-learn ``load_digits()`` images 1200..
============================  =========  =====  ==========================================

The train/validation split is by SOURCE: no photo, terrain map or digit image is seen in both.
Terrain elevations are coloured with matplotlib's ``terrain`` colormap.

Videos: a camera window moves over a source image (pan with constant velocity, zoom in or
out at a constant rate, or both; bilinear sampling, reflection at borders), or 1-2 coloured
digits bounce around a dark canvas (Moving-MNIST style). Each video has a caption of five
words (``kind motion horizontal vertical speed``) embedded as text tokens by a fixed table.

Encoding (fixed, documented, orthonormal): frames of ``(8H, 8W)`` RGB pixels in [0, 1] are cut
into ``p x p`` patches (``p = patch``, default 8, like an SD VAE's 8x), each patch
``x in R^{3p^2}`` (minus 0.5) is projected by a fixed matrix ``E (C x 3p^2)`` with orthonormal
rows: luma mean, red-green mean, blue-yellow mean, horizontal luma gradient, vertical luma
gradient, then seeded random directions (Gram-Schmidt) for ``C > 5``. Channels are divided by
their standard deviation over the training split so latents have unit scale (like SD's 0.18215).
:func:`decode` applies ``E^T`` (least-squares inverse) for previews.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from common.fsio import atomic_path
from search_space.errors import ConfigError

TRAIN, VAL = "train", "val"

#: source -> (kind, split)
SOURCES: dict[str, tuple[str, str]] = {
    "grace_hopper": ("photo", TRAIN),
    "china": ("photo", TRAIN),
    "minduka": ("photo", TRAIN),
    "jacksboro_fault_dem": ("terrain", TRAIN),
    "digits_train": ("digits", TRAIN),
    "flower": ("photo", VAL),
    "topobathy": ("terrain", VAL),
    "digits_val": ("digits", VAL),
}
DIGITS_SPLIT_INDEX = 1200
_VOCAB = ("pad", "photo", "terrain", "digits", "pan", "zoom_in", "zoom_out", "pan_zoom", "bounce",
          "left", "right", "up", "down", "still", "slow", "fast")
_TEXT_SEED = 0x7E47  # fixed: the word-embedding table never changes
_ENC_SEED = 0x1A7E  # fixed: extra encoding directions for C > 5
DATA_VERSION = "data-1"


@dataclass(frozen=True)
class VideoGeometry:
    """Latent video shape ``(C, T, H, W)`` plus text ``(tokens, dim)`` and pixels per latent."""

    latent_channels: int
    num_frames: int
    latent_height: int
    latent_width: int
    text_tokens: int
    text_dim: int
    patch: int = 8

    @property
    def pixel_hw(self) -> tuple[int, int]:
        return self.latent_height * self.patch, self.latent_width * self.patch


@dataclass(frozen=True)
class VideoSet:
    """A split of encoded videos.

    ``latents``: ``(N, C, T, H, W)`` float32; ``text``: ``(N, tokens, dim)``;
    ``pixels``: ``(N, T, 8H, 8W, 3)`` uint8 (what the latents encode, for previews), or None
    for your clips (they are not kept in memory: previews decode the files again);
    ``sources``/``captions``: one per video.
    """

    latents: torch.Tensor
    text: torch.Tensor
    pixels: np.ndarray | None
    sources: tuple[str, ...]
    captions: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.latents.shape[0])


# ---- source images ----------------------------------------------------------------------------
def _mpl_sample(name: str) -> str:
    import matplotlib
    return os.path.join(matplotlib.get_data_path(), "sample_data", name)


def _sklearn_datasets_dir() -> str:
    """``sklearn/datasets`` without importing scikit-learn (seconds on a busy machine)."""
    import importlib.util
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("data: scikit-learn is not installed (its bundled images are needed)")
    return os.path.join(next(iter(spec.submodule_search_locations)), "datasets")


def _sk_image(name: str) -> str:
    return os.path.join(_sklearn_datasets_dir(), "images", name)


def _rgb_file(path: str) -> np.ndarray:
    from PIL import Image
    with Image.open(path) as im:
        im = im.convert("RGBA")
        arr = np.asarray(im, dtype=np.float32) / 255.0
    rgb, a = arr[..., :3], arr[..., 3:4]
    return rgb * a + 1.0 * (1 - a)  # transparent -> white


def _terrain(z: np.ndarray) -> np.ndarray:
    from matplotlib import colormaps
    z = np.asarray(z, dtype=np.float64)
    z = (z - z.min()) / max(z.max() - z.min(), 1e-9)
    return colormaps["terrain"](z)[..., :3].astype(np.float32)


@functools.cache
def source_image(source: str) -> np.ndarray:
    """``(H, W, 3)`` float32 RGB in [0, 1] of an image source (not the digit sources)."""
    if source == "grace_hopper":
        return _rgb_file(_mpl_sample("grace_hopper.jpg"))
    if source == "minduka":
        return _rgb_file(_mpl_sample("Minduka_Present_Blue_Pack.png"))
    if source in ("china", "flower"):
        return _rgb_file(_sk_image(f"{source}.jpg"))
    if source == "jacksboro_fault_dem":
        with np.load(_mpl_sample("jacksboro_fault_dem.npz")) as z:
            return _terrain(z["elevation"])
    if source == "topobathy":
        with np.load(_mpl_sample("topobathy.npz")) as z:
            return _terrain(z["topo"])
    raise ConfigError(f"data.source: unknown image source {source!r}")


@functools.lru_cache(maxsize=1)
def _digits() -> np.ndarray:
    # the file behind sklearn.datasets.load_digits(): 1797 rows of 64 pixels (0..16) + label
    raw = np.loadtxt(os.path.join(_sklearn_datasets_dir(), "data", "digits.csv.gz"),
                     delimiter=",", dtype=np.float32)
    return (raw[:, :64].reshape(-1, 8, 8) / 16.0).astype(np.float32)


# ---- rendering --------------------------------------------------------------------------------
def _render_camera(img: np.ndarray, T: int, hw: tuple[int, int], rng: np.random.Generator
                   ) -> tuple[np.ndarray, list[str]]:
    """A camera pan/zoom over ``img``: ``(T, h, w, 3)`` float32 and caption words."""
    H, W = img.shape[:2]
    h, w = hw
    motion = ("pan", "zoom_in", "zoom_out", "pan_zoom")[int(rng.integers(4))]
    fast = bool(rng.integers(2))
    # window size as a fraction of the image (normalized coords span 2)
    size0 = float(rng.uniform(0.35, 0.7))
    aspect = (w / h) * (H / W)  # keep pixels square
    zoom_rate = 1.0
    if motion in ("zoom_in", "pan_zoom"):
        zoom_rate = float(rng.uniform(0.88, 0.94) if fast else rng.uniform(0.94, 0.97))
    elif motion == "zoom_out":
        zoom_rate = float(rng.uniform(1.06, 1.12) if fast else rng.uniform(1.03, 1.06))
    if motion in ("pan", "pan_zoom"):
        speed = float(rng.uniform(0.06, 0.1) if fast else rng.uniform(0.02, 0.05)) * size0 * 2
        ang = float(rng.uniform(0, 2 * np.pi))
        vx, vy = speed * np.cos(ang), speed * np.sin(ang)
    else:
        vx = vy = 0.0
    cx, cy = float(rng.uniform(-0.3, 0.3)), float(rng.uniform(-0.3, 0.3))
    thetas = []
    for t in range(T):
        s = size0 * zoom_rate ** t
        sy, sx = s, s * aspect
        if sx > 1.0:
            sy, sx = sy / sx, 1.0
        x = float(np.clip(cx + vx * t, -1 + sx, 1 - sx))
        y = float(np.clip(cy + vy * t, -1 + sy, 1 - sy))
        thetas.append([[sx, 0.0, x], [0.0, sy, y]])
    src = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None].expand(T, -1, -1, -1)
    theta = torch.tensor(thetas, dtype=torch.float32)
    grid = F.affine_grid(theta, [T, 3, h, w], align_corners=False)
    frames = F.grid_sample(src, grid, mode="bilinear", padding_mode="reflection",
                           align_corners=False)
    hdir = "still" if abs(vx) < 1e-9 else ("right" if vx > 0 else "left")
    vdir = "still" if abs(vy) < 1e-9 else ("down" if vy > 0 else "up")
    return frames.permute(0, 2, 3, 1).numpy(), [motion, hdir, vdir, "fast" if fast else "slow"]


def _render_digits(pool: np.ndarray, T: int, hw: tuple[int, int], rng: np.random.Generator
                   ) -> tuple[np.ndarray, list[str]]:
    """1-2 coloured digits bouncing on a dark canvas: ``(T, h, w, 3)`` and caption words."""
    h, w = hw
    canvas = np.zeros((T, h, w, 3), np.float32)
    canvas += np.array([0.05, 0.05, 0.12], np.float32)
    n = int(rng.integers(1, 3))
    fast = bool(rng.integers(2))
    size = max(4, int(round(min(h, w) * rng.uniform(0.35, 0.5))))  # noqa: RUF046
    vx0 = vy0 = 0.0
    for k in range(n):
        d = pool[int(rng.integers(len(pool)))]
        glyph = F.interpolate(torch.from_numpy(d)[None, None], size=(size, size), mode="bilinear",
                              align_corners=False)[0, 0].clamp(0, 1).numpy()
        color = rng.uniform(0.4, 1.0, size=3).astype(np.float32)
        x, y = rng.uniform(0, w - size), rng.uniform(0, h - size)
        sp = (rng.uniform(0.08, 0.14) if fast else rng.uniform(0.03, 0.07)) * min(h, w)
        ang = rng.uniform(0, 2 * np.pi)
        vx, vy = sp * np.cos(ang), sp * np.sin(ang)
        if k == 0:
            vx0, vy0 = vx, vy
        for t in range(T):
            xi, yi = int(round(x)), int(round(y))  # noqa: RUF046
            region = canvas[t, yi:yi + size, xi:xi + size]
            np.maximum(region, glyph[..., None] * color, out=region)
            x, y = x + vx, y + vy
            if not 0 <= x <= w - size:
                vx, x = -vx, float(np.clip(x, 0, w - size))
            if not 0 <= y <= h - size:
                vy, y = -vy, float(np.clip(y, 0, h - size))
    hdir = "right" if vx0 > 0 else "left"
    vdir = "down" if vy0 > 0 else "up"
    return canvas, ["bounce", hdir, vdir, "fast" if fast else "slow"]


# ---- encoding ---------------------------------------------------------------------------------
@functools.lru_cache(maxsize=16)
def encoding_matrix(latent_channels: int, patch: int = 8) -> np.ndarray:
    """The fixed ``(C, 3 p^2)`` encoder with orthonormal rows (see module docstring)."""
    p = patch
    if latent_channels > 3 * p * p:
        raise ConfigError(f"data.patch: {p}x{p} RGB patches have {3 * p * p} values, fewer than "
                          f"the {latent_channels} latent channels")
    yy, xx = np.meshgrid(np.arange(p) - (p - 1) / 2, np.arange(p) - (p - 1) / 2, indexing="ij")
    one = np.ones((p, p))

    def rgb(wr: float, wg: float, wb: float, spatial: np.ndarray) -> np.ndarray:
        # flattened in (channel, y, x) order
        return np.concatenate([wr * spatial.ravel(), wg * spatial.ravel(), wb * spatial.ravel()])

    rows = [rgb(0.299, 0.587, 0.114, one), rgb(1.0, -1.0, 0.0, one), rgb(-0.5, -0.5, 1.0, one),
            rgb(0.299, 0.587, 0.114, xx), rgb(0.299, 0.587, 0.114, yy)]
    rng = np.random.default_rng(_ENC_SEED)
    while len(rows) < latent_channels:
        rows.append(rng.standard_normal(3 * p * p))
    basis: list[np.ndarray] = []
    for r in rows[:latent_channels]:
        v = r.astype(np.float64)
        for b in basis:
            v = v - (v @ b) * b
        basis.append(v / np.linalg.norm(v))
    return np.stack(basis).astype(np.float32)


def _patchify(frames: torch.Tensor, p: int) -> torch.Tensor:
    """``(N, 3, ph, pw)`` -> ``(N, 3 p^2, h, w)`` in (channel, y, x) order."""
    return F.pixel_unshuffle(frames, p)


def encode(pixels: np.ndarray, latent_channels: int, patch: int = 8) -> torch.Tensor:
    """``(N, T, ph, pw, 3)`` in [0, 1] -> unnormalized latents ``(N, C, T, ph/p, pw/p)``."""
    N, T = pixels.shape[:2]
    x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).reshape(N * T, *pixels.shape[2:])
    x = _patchify(x.permute(0, 3, 1, 2) - 0.5, patch)  # (NT, 3p^2, h, w)
    E = torch.from_numpy(encoding_matrix(latent_channels, patch))
    z = torch.einsum("cd,ndhw->nchw", E, x)
    return z.reshape(N, T, latent_channels, *z.shape[-2:]).permute(0, 2, 1, 3, 4).contiguous()


def decode(latents: torch.Tensor, channel_std: torch.Tensor, patch: int = 8) -> np.ndarray:
    """Least-squares inverse of the encoding: ``(N, C, T, h, w)`` -> ``(N, T, ph, pw, 3)``."""
    N, C, T, h, w = latents.shape
    E = torch.from_numpy(encoding_matrix(C, patch))
    z = (latents * channel_std.view(1, C, 1, 1, 1)).permute(0, 2, 1, 3, 4).reshape(N * T, C, h, w)
    x = torch.einsum("cd,nchw->ndhw", E, z)
    img = F.pixel_shuffle(x, patch) + 0.5
    return img.clamp(0, 1).permute(0, 2, 3, 1).reshape(N, T, h * patch, w * patch, 3).numpy()


@functools.lru_cache(maxsize=8)
def _word_table(text_dim: int) -> np.ndarray:
    rng = np.random.default_rng(_TEXT_SEED)
    return rng.standard_normal((len(_VOCAB), text_dim)).astype(np.float32)


def embed_caption(words: list[str], tokens: int, text_dim: int) -> np.ndarray:
    """Fixed word-table embedding of a caption, padded/truncated to ``tokens``."""
    table = _word_table(text_dim)
    ids = [_VOCAB.index(w) for w in words][:tokens]
    ids += [0] * (tokens - len(ids))
    return table[ids]


# ---- datasets ---------------------------------------------------------------------------------
def split_sources(split: str) -> tuple[str, ...]:
    if split not in (TRAIN, VAL):
        raise ConfigError(f"data.split: expected 'train' or 'val', got {split!r}")
    return tuple(s for s, (_, sp) in SOURCES.items() if sp == split)


def render_videos(split: str, n: int, geom: VideoGeometry, seed: int
                  ) -> tuple[np.ndarray, list[str], list[str], np.ndarray]:
    """``n`` pixel videos of ``split``: ``(pixels (n,T,ph,pw,3) float32, sources, captions,
    text (n, tokens, dim))``. Sources cycle in a fixed order; all randomness from ``seed``."""
    rng = np.random.default_rng([seed, 0 if split == TRAIN else 1])
    srcs = split_sources(split)
    digits = _digits()
    pool = digits[:DIGITS_SPLIT_INDEX] if split == TRAIN else digits[DIGITS_SPLIT_INDEX:]
    hw = geom.pixel_hw
    pix = np.zeros((n, geom.num_frames, hw[0], hw[1], 3), np.float32)
    sources, captions, text = [], [], []
    for i in range(n):
        src = srcs[i % len(srcs)]
        kind = SOURCES[src][0]
        if kind == "digits":
            frames, words = _render_digits(pool, geom.num_frames, hw, rng)
        else:
            frames, words = _render_camera(source_image(src), geom.num_frames, hw, rng)
        words = [kind] + words
        pix[i] = frames
        sources.append(src)
        captions.append(" ".join(words))
        text.append(embed_caption(words, geom.text_tokens, geom.text_dim))
    empty = np.zeros((0, geom.text_tokens, geom.text_dim), np.float32)
    return pix, sources, captions, np.stack(text) if text else empty


@functools.lru_cache(maxsize=8)
def load_splits(geom: VideoGeometry, num_train: int, num_val: int, seed: int
                ) -> tuple[VideoSet, VideoSet, torch.Tensor]:
    """``(train, val, channel_std)``; latents normalized by the train split's channel std.

    Cached per process (the result is immutable: do not modify its tensors in place).
    """
    if num_train < 1 or num_val < 1:
        raise ConfigError("data: num_train and num_val must be >= 1")
    for k in ("latent_height", "latent_width"):
        if getattr(geom, k) < 1:
            raise ConfigError(f"data.{k}: must be >= 1")
    out = []
    zs = []
    for split, n in ((TRAIN, num_train), (VAL, num_val)):
        pix, sources, captions, text = render_videos(split, n, geom, seed)
        z = encode(pix, geom.latent_channels, geom.patch)
        zs.append(z)
        out.append((pix, sources, captions, text))
    std = zs[0].transpose(0, 1).reshape(geom.latent_channels, -1).std(dim=1).clamp_min(1e-6)
    sets = []
    for (pix, sources, captions, text), z in zip(out, zs):
        sets.append(VideoSet(latents=z / std.view(1, -1, 1, 1, 1), text=torch.from_numpy(text),
                             pixels=(pix * 255 + 0.5).astype(np.uint8), sources=tuple(sources),
                             captions=tuple(captions)))
    return sets[0], sets[1], std


# ---- previews ---------------------------------------------------------------------------------
def save_preview(videos: VideoSet, path: str, max_videos: int = 8, decoded: bool = False,
                 channel_std: torch.Tensor | None = None) -> str:
    """Write a PNG strip (one row per video, one column per frame) or, for ``*.gif``, an
    animated GIF of a grid of videos. ``decoded=True`` shows what the latents encode."""
    n = min(max_videos, len(videos))
    if decoded:
        if channel_std is None:
            raise ConfigError("preview: decoded=True needs channel_std")
        frames = (decode(videos.latents[:n], channel_std) * 255 + 0.5).astype(np.uint8)
    else:
        frames = videos.pixels[:n]
    return save_frames(frames, path)


def save_frames(frames: np.ndarray, path: str) -> str:
    """Write ``frames (n, T, h, w, 3)`` uint8 atomically: an animated GIF grid for ``*.gif``,
    else a PNG strip (one row per video, one column per frame)."""
    with atomic_path(path) as tmp:
        _write_frames(frames, tmp, gif=str(path).lower().endswith(".gif"))
    return str(path)


def _write_frames(frames: np.ndarray, path, gif: bool) -> None:
    """``frames (n, T, h, w, 3)`` uint8 as an animated GIF grid or a PNG strip at ``path``."""
    from PIL import Image

    n, T, h, w, _ = frames.shape
    if gif:
        cols = min(n, 4)
        rows = (n + cols - 1) // cols
        imgs = []
        for t in range(T):
            grid = np.zeros((rows * h, cols * w, 3), np.uint8)
            for i in range(n):
                r, c = divmod(i, cols)
                grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = frames[i, t]
            imgs.append(Image.fromarray(grid))
        imgs[0].save(path, format="GIF", save_all=True, append_images=imgs[1:], duration=150,
                     loop=0)
    else:
        strip = frames.transpose(0, 2, 1, 3, 4).reshape(n * h, T * w, 3)
        Image.fromarray(strip).save(path, format="PNG")
