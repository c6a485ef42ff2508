"""Your clips: folders and manifests, real video files (PyAV) and frame folders (Pillow)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tiny_media import moving_frames, write_frames_dir, write_video

from common.errors import ConfigError
from evaluators._clips import BadClip, decode_windows, hash_split, list_clips, window_starts


def _ramp(n: int, h: int = 32, w: int = 48) -> np.ndarray:
    """Frame t is uniformly grey at level 8 + 12 t (survives lossy codecs within a few levels)."""
    return np.stack([np.full((h, w, 3), 8 + 12 * t, np.uint8) for t in range(n)])


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    write_video(d / "a.mp4", moving_frames(10, seed=1))
    (d / "a.txt").write_text("a red square\n moves  right")
    write_video(d / "sub" / "b.webm", moving_frames(10, seed=2))
    write_video(d / "sub" / "c.gif", moving_frames(10, seed=3))
    write_frames_dir(d / "seq", moving_frames(12, seed=4))
    (d / "seq.txt").write_text("frames in a folder")
    (d / ".hidden.mp4").write_bytes(b"not listed")
    (d / "notes.md").write_text("not a clip")
    return d


def test_a_folder_lists_videos_and_frame_folders_with_sidecar_captions(clip_dir):
    clips = list_clips(str(clip_dir), 0.3)
    assert [c.rel for c in clips] == ["a.mp4", "seq", "sub/b.webm", "sub/c.gif"]
    caps = {c.rel: c.caption for c in clips}
    assert caps == {"a.mp4": "a red square moves right", "seq": "frames in a folder",
                    "sub/b.webm": "", "sub/c.gif": ""}
    assert [c.frames_dir for c in clips] == [False, True, False, False]
    assert clips[1].files()[:3] == [str(clip_dir / "seq" / f"frame_{i}.png") for i in range(3)]  # 2 < 10
    # the split is a function of the relative path only: the same in any folder, any order
    assert all(c.split == hash_split(c.rel, 0.3) for c in clips)
    assert hash_split("x.mp4", 0.0) == "train" and hash_split("x.mp4", 1.0) == "val"
    fracs = [hash_split(f"clip{i}.mp4", 0.25) == "val" for i in range(2000)]
    assert 0.22 < np.mean(fracs) < 0.28


@pytest.mark.parametrize("name", ["a.mp4", "sub/b.webm", "sub/c.gif", "seq"])
def test_every_format_decodes_to_windows_of_the_task_size(clip_dir, name):
    (clip,) = [c for c in list_clips(str(clip_dir), 0.3) if c.rel == name]
    x = decode_windows(clip, num_frames=4, stride=2, windows=2, hw=(16, 24), resize="crop")
    assert x.shape == (2, 4, 16, 24, 3) and x.dtype == np.uint8
    assert np.abs(np.diff(x[0].astype(int), axis=0)).mean() > 1  # the square moves


def test_stride_and_windows_pick_the_right_frames(tmp_path):
    frames = _ramp(15)
    write_video(tmp_path / "v" / "r.mp4", frames)
    write_frames_dir(tmp_path / "f" / "seq", frames)
    clip_mp4, clip_png = list_clips(str(tmp_path / "v"), 0.2), list_clips(str(tmp_path / "f"), 0.2)
    assert window_starts(15, 7, 2) == [2, 6] and window_starts(6, 7, 1) is None
    for clips, tol in ((clip_mp4, 4), (clip_png, 0)):
        x = decode_windows(clips[0], num_frames=4, stride=2, windows=2, hw=(8, 8), resize="crop")
        level = x.reshape(2, 4, -1).mean(-1)
        want = 8 + 12 * np.array([[2, 4, 6, 8], [6, 8, 10, 12]])
        assert np.abs(level - want).max() <= tol, level


def test_crop_keeps_the_aspect_ratio_and_stretch_does_not(tmp_path):
    f = np.full((2, 30, 60, 3), 200, np.uint8)
    f[:, :, :10] = 0  # a dark band at the left edge: outside the centre square
    write_frames_dir(tmp_path / "c" / "seq", f)
    (clip,) = list_clips(str(tmp_path / "c"), 0.2)
    crop = decode_windows(clip, 2, 1, 1, (16, 16), "crop")
    stretch = decode_windows(clip, 2, 1, 1, (16, 16), "stretch")
    assert crop.min() > 150
    assert stretch[0, 0, :, 0].max() < 50


def test_manifests_csv_and_jsonl_with_split_column(clip_dir, tmp_path):
    csv = clip_dir / "m.csv"
    csv.write_text("path,caption,split,extra\na.mp4,first,val,x\nsub/b.webm,\"second, with comma\",,y\n"
                   "seq,third,train,z\n")
    clips = list_clips(str(csv), 0.3)
    assert [(c.rel, c.caption) for c in clips] == [("a.mp4", "first"), ("seq", "third"),
                                                   ("sub/b.webm", "second, with comma")]
    assert [c.split for c in clips] == ["val", "train", hash_split("sub/b.webm", 0.3)]
    jl = tmp_path / "m.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in (
        {"path": str(clip_dir / "sub" / "c.gif"), "caption": "abs path", "split": "validation"},
        {"path": str(clip_dir / "seq")})) + "\n\n")
    clips = list_clips(str(jl), 0.3)
    assert [c.split for c in clips] == [hash_split(clips[0].rel, 0.3), "val"]
    assert clips[1].caption == "abs path" and clips[0].frames_dir


@pytest.mark.parametrize("text, match", [
    ("file,caption\na.mp4,x\n", r"m\.csv: no 'path' column \(columns: file, caption\)"),
    ("path,caption\nmissing.mp4,x\n", r"m\.csv: row 2: missing\.mp4: no such file"),
    ("path,split\na.mp4,test\n", r"m\.csv: row 2: split 'test' is not one of"),
    ("path\na.mp4\n./a.mp4\n", r"m\.csv: row 3: \./a\.mp4 is listed twice \(rows 2 and 3\)"),
    ("path\n\n", r"m\.csv: the manifest lists no clips"),
])
def test_bad_manifest_rows_are_one_line_errors_naming_the_row(clip_dir, text, match):
    (clip_dir / "m.csv").write_text(text)
    with pytest.raises(ConfigError, match=match):
        list_clips(str(clip_dir / "m.csv"), 0.2)


def test_bad_paths(tmp_path):
    with pytest.raises(ConfigError, match="no such file or directory"):
        list_clips(str(tmp_path / "nope"), 0.2)
    with pytest.raises(ConfigError, match="no clips in this folder"):
        list_clips(str(tmp_path), 0.2)
    (tmp_path / "m.txt").write_text("path\n")
    with pytest.raises(ConfigError, match=r"expected a folder of clips or a \.csv/\.jsonl manifest"):
        list_clips(str(tmp_path / "m.txt"), 0.2)
    (tmp_path / "m.jsonl").write_text('{"path": "a.mp4"}\n[1]\n')
    with pytest.raises(ConfigError, match=r"m\.jsonl: line 2: expected an object"):
        list_clips(str(tmp_path / "m.jsonl"), 0.2)


def test_unreadable_and_too_short_clips_name_the_file(tmp_path):
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x01 not a video" * 50)
    write_video(tmp_path / "short.mp4", moving_frames(3))
    write_frames_dir(tmp_path / "seq", moving_frames(4))
    (tmp_path / "seq" / "frame_9.png").write_bytes(b"garbage")
    clips = {c.rel: c for c in list_clips(str(tmp_path), 0.2)}
    with pytest.raises(BadClip, match=r"broken\.mp4: cannot decode"):
        decode_windows(clips["broken.mp4"], 4, 1, 1, (8, 8), "crop")
    with pytest.raises(BadClip, match=r"short\.mp4: 3 frames, shorter than the 7 a clip needs "
                                      r"\(4 frames, stride 2\)"):
        decode_windows(clips["short.mp4"], 4, 2, 1, (8, 8), "crop")
    with pytest.raises(BadClip, match=r"frame_9\.png: cannot read this frame"):
        decode_windows(clips["seq"], 2, 1, 1, (8, 8), "crop")


def test_without_the_video_extra_decoding_is_a_one_line_error(clip_dir, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "av", None)  # what `import av` sees without PyAV installed
    (clip,) = [c for c in list_clips(str(clip_dir), 0.3) if c.rel == "a.mp4"]
    with pytest.raises(ConfigError, match=r"a\.mp4: decoding video needs PyAV, the 'video' extra"):
        decode_windows(clip, 2, 1, 1, (8, 8), "crop")
