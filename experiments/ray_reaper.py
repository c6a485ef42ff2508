"""Reaper of a local Ray whose driver died: run as a script (standard library only) by
:func:`experiments.ray_access.private_temp_dir`, ``python ray_reaper.py MARKER DIR DRIVER_PID``.

It waits for end-of-file on its stdin, a pipe whose only writer is the driver: the kernel
closes it when the driver exits, however it exits (``kill -9`` included). Meanwhile it notes,
every :data:`SNAPSHOT_S` seconds, the driver's children whose command line names ``MARKER``
(the session folder: GCS, raylet, monitors) and all their descendants (Ray's agents rename
themselves, which overwrites their environment and command line, and are re-parented when the
raylet dies); other children of the driver are not touched. Then it stops those processes
(matched by pid AND start time, so a reused pid is spared) and every process of this user whose
initial environment carries ``TEMPONAS_RAY_SESSION=MARKER`` (workers Ray started since the last
note), SIGTERM first, then SIGKILL after a short grace, and removes the Ray's private temporary
``DIR``. Without it Ray's
agents outlive a killed driver by about a minute.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import sys
import time

MARKER_VAR = "TEMPONAS_RAY_SESSION"
TERM_GRACE_S = 1.0
SNAPSHOT_S = 1.0


def _stat(pid: int) -> tuple[int, int] | None:
    """``(parent pid, start time)`` of a live (non-zombie) process, None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == b"Z" else (int(fields[1]), int(fields[19]))


def descendants(roots: set[int]) -> dict[int, int]:
    """``{pid: start time}`` of every live descendant of ``roots``."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None:
                children.setdefault(st[0], []).append(int(name))
                starts[int(name)] = st[1]
    out: dict[int, int] = {}
    todo = list(roots)
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out and c != os.getpid():
                out[c] = starts[c]
                todo.append(c)
    return out


def session_pids(marker: str, parents: set[int]) -> set[int]:
    """Children of ``parents`` whose command line names the session folder ``marker`` (the
    GCS, raylet and monitors of this Ray; not any other child of the driver)."""
    out = set()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        st = _stat(int(name))
        if st is None or st[0] not in parents:
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    out.add(int(name))
        except OSError:
            continue
    return out


def marked_pids(marker: str) -> list[int]:
    """Processes of this user (but this one) started with ``MARKER_VAR=marker``."""
    want = f"{MARKER_VAR}={marker}".encode()
    me, uid, out = os.getpid(), os.getuid(), []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            if os.stat(f"/proc/{name}").st_uid != uid:
                continue
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:  # gone, or not ours to read
            continue
        if want in env:
            out.append(int(name))
    return out


def stop(marker: str, known: dict[int, int], grace_s: float = TERM_GRACE_S) -> int:
    """SIGTERM, then (after ``grace_s``) SIGKILL, the ``known`` processes still alive with
    the same start time, their descendants and the processes of ``marker``; how many."""

    def alive() -> set[int]:
        same = {p for p, t in known.items() if (_stat(p) or (0, -1))[1] == t}
        return same | set(descendants(same)) | set(marked_pids(marker))

    pids = alive()
    n = len(pids)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        t_end = time.monotonic() + grace_s
        while sig == signal.SIGTERM and time.monotonic() < t_end and alive():
            time.sleep(0.05)
        pids = alive()
        if not pids:
            break
    return n


def main(argv: list[str]) -> int:
    marker, tmp, driver = argv[1], argv[2], int(argv[3])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the driver
    known: dict[int, int] = {}
    fd = sys.stdin.fileno()
    while True:
        ready, _, _ = select.select([fd], [], [], SNAPSHOT_S)
        if ready and not os.read(fd, 65536):
            break
        roots = session_pids(marker, {driver})
        known.update({p: t for p, t in descendants({driver}).items() if p in roots})
        known.update(descendants(roots))
    stop(marker, known)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
