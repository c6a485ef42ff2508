"""Your clips: a folder or a manifest of videos, cut into fixed-length frame windows.

A **folder**: every video file below it (``.mp4 .webm .gif .mov .mkv .avi .m4v``, decoded with
PyAV) is one clip, and every directory that directly holds image files (``.png .jpg .jpeg
.webp .bmp``, read with Pillow, frames in natural name order) is one clip of those frames.
Caption: the text of a sidecar file (``a/b.mp4`` -> ``a/b.txt``; a frame folder ``a/f/`` ->
``a/f.txt`` or ``a/f/caption.txt``), else empty.

A **manifest**: a CSV file with a header, or a JSONL file of objects, with ``path`` (relative to
the manifest's folder, or absolute; a video file or a frame folder), ``caption`` (optional) and
``split`` (optional: ``train``, ``val`` or ``validation``). Other columns are ignored.

**Split** by file: the manifest's ``split`` where given, else ``val`` when the first 8 bytes of
``sha256(relative path)`` read as a fraction of 2^64 are below ``val_fraction`` (so a file never
changes split when others are added). **Windows**: ``frames`` frames taken every ``stride``-th
frame; ``windows`` of them per file, centred in equal parts of the file. **Resize**: ``crop``
scales the shorter side to cover the target and centre-crops (as diffusers/AnimateDiff training
scripts do); ``stretch`` resizes to the target ignoring the aspect ratio.

Torch-free; PyAV is imported only to decode a video file.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from dataclasses import dataclass

import numpy as np

from common.errors import ConfigError
from common.loaders import parse_json

VIDEO_EXTS = (".mp4", ".webm", ".gif", ".mov", ".mkv", ".avi", ".m4v")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MANIFEST_EXTS = (".csv", ".jsonl")
TRAIN, VAL = "train", "val"
_SPLIT_NAMES = {"train": TRAIN, "val": VAL, "validation": VAL}


class BadClip(ConfigError):
    """A clip that cannot be used (unreadable, or shorter than a window); names the file."""


@dataclass(frozen=True)
class Clip:
    """One clip: ``rel`` (its identity: path relative to the folder/manifest, POSIX), ``path``
    (absolute), ``caption``, ``split`` and whether it is a folder of frames."""

    rel: str
    path: str
    caption: str
    split: str
    frames_dir: bool

    def files(self) -> list[str]:
        """The files whose content is this clip (the video, or the frames in order)."""
        if not self.frames_dir:
            return [self.path]
        return [os.path.join(self.path, n) for n in _image_names(self.path)]


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _image_names(d: str) -> list[str]:
    try:
        names = os.listdir(d)
    except OSError:
        return []
    return sorted((n for n in names if n.lower().endswith(IMAGE_EXTS) and not n.startswith(".")),
                  key=_natural)


def hash_split(rel: str, val_fraction: float) -> str:
    """``val`` if the hash of the relative path falls below ``val_fraction``, else ``train``."""
    u = int.from_bytes(hashlib.sha256(rel.encode("utf-8")).digest()[:8], "big") / 2.0 ** 64
    return VAL if u < val_fraction else TRAIN


def _read_caption(*candidates: str) -> str:
    for p in candidates:
        if os.path.isfile(p):
            with open(p, encoding="utf-8", errors="replace") as f:
                return " ".join(f.read().split())
    return ""


def list_clips(path: str, val_fraction: float, where: str = "data.path") -> list[Clip]:
    """The clips of a folder or a manifest file, sorted by relative path. Errors name the
    file (and row)."""
    if not path:
        raise ConfigError(f"{where}: required when data.source is clips (a folder of clips or a "
                          f"CSV/JSONL manifest)")
    p = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(p):
        clips = _folder_clips(p, val_fraction)
        if not clips:
            raise ConfigError(f"{where}: {path}: no clips in this folder (video files "
                              f"{', '.join(VIDEO_EXTS)} or folders of {', '.join(IMAGE_EXTS)} frames)")
        return clips
    if not os.path.exists(p):
        raise ConfigError(f"{where}: {path}: no such file or directory")
    if not p.lower().endswith(MANIFEST_EXTS):
        raise ConfigError(f"{where}: {path}: expected a folder of clips or a .csv/.jsonl manifest")
    rows = _manifest_rows(p)
    if not rows:
        raise ConfigError(f"{path}: the manifest lists no clips")
    return _manifest_clips(p, rows, val_fraction)


def _folder_clips(root: str, val_fraction: float) -> list[Clip]:
    out = []
    for d, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        files = sorted(f for f in files if not f.startswith("."))
        rel_d = os.path.relpath(d, root)
        for f in files:
            if f.lower().endswith(VIDEO_EXTS):
                rel = os.path.normpath(os.path.join(rel_d, f)).replace(os.sep, "/")
                full = os.path.join(d, f)
                cap = _read_caption(os.path.splitext(full)[0] + ".txt")
                out.append(Clip(rel, full, cap, hash_split(rel, val_fraction), False))
        if any(f.lower().endswith(IMAGE_EXTS) for f in files):
            rel = rel_d.replace(os.sep, "/")
            cap = _read_caption(d.rstrip(os.sep) + ".txt", os.path.join(d, "caption.txt"))
            out.append(Clip(rel, d, cap, hash_split(rel, val_fraction), True))
    return sorted(out, key=lambda c: c.rel)


def _manifest_rows(p: str) -> list[tuple[int, dict]]:
    """``(row number, record)`` of a CSV (header = row 1) or JSONL manifest."""
    name = os.path.basename(p)
    try:
        with open(p, encoding="utf-8", newline="") as f:
            if p.lower().endswith(".csv"):
                reader = csv.DictReader(f)
                cols = [c.strip() for c in (reader.fieldnames or [])]
                if "path" not in cols:
                    raise ConfigError(f"{p}: no 'path' column (columns: {', '.join(cols) or 'none'})")
                return [(i, {(k or "").strip(): (v or "") for k, v in r.items()})
                        for i, r in enumerate(reader, 2)]
            rows = []
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                rec = parse_json(line, f"{p}: line {i}")  # bounded nesting and size
                if not isinstance(rec, dict):
                    raise ConfigError(f"{p}: line {i}: expected an object with 'path'")
                rows.append((i, rec))
            return rows
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a UTF-8 text file") from None
    except OSError as e:
        raise ConfigError(f"{name}: cannot read ({e.strerror})") from None


def _manifest_clips(p: str, rows: list[tuple[int, dict]], val_fraction: float) -> list[Clip]:
    base = os.path.dirname(p)
    unit = "row" if p.lower().endswith(".csv") else "line"
    seen: dict[str, int] = {}
    out = []
    for i, rec in rows:
        at = f"{p}: {unit} {i}"
        raw = rec.get("path")
        if not isinstance(raw, str) or not raw.strip():
            raise ConfigError(f"{at}: missing 'path'")
        rel = os.path.normpath(raw.strip()).replace(os.sep, "/")
        full = rel if os.path.isabs(rel) else os.path.join(base, rel)
        if rel in seen:
            raise ConfigError(f"{at}: {raw} is listed twice ({unit}s {seen[rel]} and {i})")
        seen[rel] = i
        if not os.path.exists(full):
            raise ConfigError(f"{at}: {raw}: no such file or directory")
        frames_dir = os.path.isdir(full)
        if frames_dir and not _image_names(full):
            raise ConfigError(f"{at}: {raw}: a folder without {', '.join(IMAGE_EXTS)} frames")
        cap = rec.get("caption", "")
        if cap is None:
            cap = ""
        if not isinstance(cap, str):
            raise ConfigError(f"{at}: 'caption' must be text, got {cap!r}")
        split = rec.get("split") or ""
        if not isinstance(split, str) or (split.strip() and split.strip().lower() not in _SPLIT_NAMES):
            raise ConfigError(f"{at}: split {split!r} is not one of train, val, validation (or empty)")
        split = _SPLIT_NAMES[split.strip().lower()] if split.strip() else hash_split(rel, val_fraction)
        out.append(Clip(rel, os.path.abspath(full), " ".join(cap.split()), split, frames_dir))
    return sorted(out, key=lambda c: c.rel)


# ---- decoding ---------------------------------------------------------------------------------
def window_starts(n: int, span: int, windows: int) -> list[int] | None:
    """First frames of ``windows`` windows of ``span`` frames in ``n``, each centred in one of
    ``windows`` equal parts; None if ``n < span``."""
    if n < span:
        return None
    free = n - span
    return [int(round((i + 0.5) * free / windows)) for i in range(windows)]  # noqa: RUF046


def fit_frame(img, hw: tuple[int, int], resize: str) -> np.ndarray:
    """A PIL image as ``(h, w, 3)`` uint8 RGB: ``crop`` (cover, centre-crop) or ``stretch``."""
    from PIL import Image

    h, w = hw
    img = img.convert("RGB")
    if resize == "stretch":
        img = img.resize((w, h), Image.Resampling.BICUBIC)
    else:
        W, H = img.size
        s = max(w / W, h / H)
        nw, nh = max(w, int(round(W * s))), max(h, int(round(H * s)))  # noqa: RUF046
        if (nw, nh) != (W, H):
            img = img.resize((nw, nh), Image.Resampling.BICUBIC)
        left, top = (nw - w) // 2, (nh - h) // 2
        img = img.crop((left, top, left + w, top + h))
    return np.asarray(img, dtype=np.uint8)


def _video_frames(path: str, span: int, windows: int, hw: tuple[int, int], resize: str
                  ) -> tuple[list[np.ndarray], int]:
    """``(frames, n)``: decoded, fitted frames and the clip's frame count ``n``. Decoding stops
    at the last frame a window needs when the container says how many frames it has (then
    ``n`` is that count); otherwise, or when it holds fewer, every frame is decoded."""
    try:
        import av
    except ImportError:
        raise ConfigError(f"{path}: decoding video needs PyAV, the 'video' extra "
                          f"(pip install -e '.[video]')") from None

    frames: list[np.ndarray] = []
    try:
        with av.open(path) as c:
            if not c.streams.video:
                raise BadClip(f"{path}: no video stream")
            st = c.streams.video[0]
            st.thread_type = "AUTO"
            starts = window_starts(int(st.frames or 0), span, windows)
            last = max(starts) + span - 1 if starts else None
            for frame in c.decode(st):
                frames.append(fit_frame(frame.to_image(), hw, resize))
                if last is not None and len(frames) > last:
                    return frames, int(st.frames)
    except BadClip:
        raise
    except (av.FFmpegError, OSError, ValueError, EOFError) as e:
        raise BadClip(f"{path}: cannot decode ({type(e).__name__}: {e})") from None
    return frames, len(frames)


def _image_frames(clip: Clip, hw: tuple[int, int], resize: str) -> list[np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    out = []
    for f in clip.files():
        try:
            with Image.open(f) as im:
                out.append(fit_frame(im, hw, resize))
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise BadClip(f"{f}: cannot read this frame ({type(e).__name__}: {e})") from None
    return out


def decode_windows(clip: Clip, num_frames: int, stride: int, windows: int, hw: tuple[int, int],
                   resize: str) -> np.ndarray:
    """``(windows, num_frames, h, w, 3)`` uint8 frames of ``clip``; :class:`BadClip` if it
    cannot be read or is shorter than ``(num_frames - 1) * stride + 1`` frames."""
    span = (num_frames - 1) * stride + 1
    if clip.frames_dir:
        frames = _image_frames(clip, hw, resize)
        n = len(frames)
    else:
        frames, n = _video_frames(clip.path, span, windows, hw, resize)
    starts = window_starts(n, span, windows)
    if starts is None:
        raise BadClip(f"{clip.path}: {n} frames, shorter than the {span} a clip needs "
                      f"({num_frames} frames, stride {stride})")
    idx = np.asarray([[s + t * stride for t in range(num_frames)] for s in starts])
    return np.stack(frames)[idx]

