"""Issue 12 acceptance, end to end on CPU with no download: a tiny random SD-style pipeline
(UNet2DConditionModel + AutoencoderKL + CLIP text model, save_pretrained) and a dozen mp4 clips
written with PyAV run a ``short_train`` search from ONE experiment config through the real CLI,
a real local Ray and real Optuna storage; a second run re-encodes nothing (the cache's own
event log says so); bad clips and a VAE that does not fit fail before anything is written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import yaml
from tiny_media import (
    DIFFUSERS_BACKBONE,
    acceptance_config,
    moving_frames,
    tiny_pipeline,
    tiny_vae,
    write_clips,
    write_video,
)

from common.fsio import read_jsonl

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("your_model")
    model = tiny_pipeline(d / "sd_tiny")
    manifest = write_clips(d / "clips", n=12)
    cfg = d / "your_model.yaml"
    cfg.write_text(yaml.safe_dump(acceptance_config(model, manifest, str(d / "cache")), sort_keys=False))
    return d, cfg


def _cli(*argv: str) -> tuple[int, str, str]:
    import contextlib
    import io

    from experiments.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def _search(cfg, out) -> tuple[str, float, float]:
    """``temponas search CFG --out OUT`` as the user runs it: its own process and its own local
    Ray (so nothing is remembered from an earlier run but the disk). ``(stdout, wall s, CPU s)``,
    CPU = user + sys of the command and the processes it waited for (Ray's raylet and workers)."""
    import resource

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "experiments.cli", "search", str(cfg), "--out", str(out),
                        "--no-progress"], env=env, capture_output=True, text=True, timeout=500)
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout, wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def _events(cache) -> dict[str, list[dict]]:
    """The cache's own log: store kind (latents/text) -> one record per use."""
    out: dict[str, list[dict]] = {}
    for name in sorted(os.listdir(cache / "data")):
        p = cache / "data" / name / "events.jsonl"
        if p.exists():
            out.setdefault(name.split("-")[0], []).extend(r for _, r in read_jsonl(p))
    return out


def test_short_train_search_on_your_model_and_clips_twice(world, capsys):
    d, cfg = world
    out, wall1, cpu1 = _search(cfg, d / "run1")
    assert "4 complete, 0 over the memory budget (not evaluated), 0 failed this session; 4 evaluations run" in out
    first = _events(d / "cache")
    # the driver encoded the 12 clips and their 12 captions once, before any trial ...
    assert [(e["encoded"], e["reused"]) for e in first["latents"][:1]] == [(12, 0)]
    assert [(e["encoded"], e["reused"]) for e in first["text"][:1]] == [(12, 0)]
    # ... and the Ray worker(s) read them (another pid) without encoding
    assert len({e["pid"] for e in first["latents"]}) >= 2
    assert all(e["encoded"] == 0 and e["reused"] == 12 for k in first for e in first[k][1:])
    rows = [r for _, r in read_jsonl(d / "run1" / "evaluations.jsonl")]
    assert len(rows) == 4 and all(r["extras"]["val_loss"] > 0 for r in rows)

    out, wall2, cpu2 = _search(cfg, d / "run2")  # a new process, a new Ray: only the disk remembers
    assert "4 evaluations run, 0 served from the cache" in out  # cache_results: false
    second = {k: v[len(first[k]):] for k, v in _events(d / "cache").items()}
    assert second["latents"] and second["text"]
    assert sum(e["encoded"] for k in second for e in second[k]) == 0  # re-encodes nothing
    assert all(e["reused"] == 12 for k in second for e in second[k])
    # the preset's spatial layers are pretrained on the clips once; the UNet's own weights never are
    pretrained = list((d / "cache" / "pretrained").glob("*.safetensors"))
    assert len(pretrained) == (0 if DIFFUSERS_BACKBONE else 1)
    with capsys.disabled():
        print(f"\n[e2e] run 1: {wall1:.1f} s wall, {cpu1:.1f} s CPU (12 clips + 12 captions encoded); "
              f"run 2: {wall2:.1f} s wall, {cpu2:.1f} s CPU (0 encoded)")


def _bad_world(tmp_path, world, edit) -> tuple:
    d, _ = world
    clips = tmp_path / "clips"
    shutil.copytree(d / "clips", clips)
    cfg = acceptance_config(str(d / "sd_tiny"), str(clips / "manifest.csv"), str(tmp_path / "cache"))
    edit(clips, cfg)
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p, tmp_path / "run"


def _unreadable(clips, cfg):
    (clips / "videos" / "clip_03.mp4").write_bytes(b"\x00 not a video \x01" * 40)


def _too_short(clips, cfg):
    write_video(clips / "videos" / "clip_05.mp4", moving_frames(3, seed=5))


def _vae_channels(clips, cfg):
    cfg["evaluator"]["options"]["data"]["vae"] = tiny_vae(clips / "vae8", latent_channels=8, levels=4)


@pytest.mark.parametrize("edit, message", [
    (_unreadable, r"clips/videos/clip_03\.mp4: cannot decode \(InvalidDataError: .*\); data\.skip_bad: true "
                  r"skips unusable clips"),
    (_too_short, r"clips/videos/clip_05\.mp4: 3 frames, shorter than the 4 a clip needs \(4 frames, stride 1\); "
                 r"data\.skip_bad: true skips unusable clips"),
    (_vae_channels, r"clips/vae8/config\.json: latent_channels 8 != the backbone's input channels 4 "
                    r"\(task\.latent_channels\)"),
], ids=["unreadable clip", "clip shorter than the frame count", "VAE channels != backbone input"])
def test_bad_data_is_one_line_exit_2_and_nothing_written(world, tmp_path, edit, message):
    import re

    cfg, run = _bad_world(tmp_path, world, edit)
    rc, out, err = _cli("search", str(cfg), "--out", str(run), "--no-progress")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(message, lines[0]), lines[0]
    assert not run.exists()  # the run folder was never created
    assert json.dumps(out) == '""'
