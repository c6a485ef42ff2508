"""Who may use the search's Ray, and what it leaves behind.

* A local Ray the search starts gets a fresh random token per run (Ray's token
  authentication, ``RAY_AUTH_MODE=token``): the token lives in this process's environment
  only (``RAY_AUTH_TOKEN``; ``/proc/<pid>/environ`` is readable by its user alone) and in the
  environment Ray's daemons and workers inherit; it is never written to a file. A process
  without it -- another user's, or one of yours that was not started by the search -- is
  refused by every Ray server (GCS, raylets, workers).
* Its session folder lives in a private (0700) temporary directory that is removed when the
  search ends; directories left by drivers that were killed are removed by the next search.
* :func:`probe_gcs` asks an address given with ``--ray-address`` one question (Ray's
  ``GetClusterId`` RPC, with the token Ray would send) within a few seconds, so an address that
  is not a reachable Ray cluster -- nothing listens, an HTTP server, an unknown host, a token
  the cluster refuses -- fails in one line instead of ``ray.init`` retrying for minutes.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common.errors import TemponasError
from experiments.ray_reaper import MARKER_VAR

#: prefix of the private temporary directories of local Rays (under the system temp dir)
TEMP_PREFIX = "temponas-ray-"
#: how long :func:`probe_gcs` may take in all (name lookup + connection + one RPC)
PROBE_TIMEOUT_S = 8.0
_GET_CLUSTER_ID = "/ray.rpc.NodeInfoGcsService/GetClusterId"
_DEFAULT_TOKEN_PATH = Path.home() / ".ray" / "auth_token"


class RayAccessError(TemponasError):
    """``--ray-address`` is not a Ray cluster this search can join."""


# ---- the per-run token of a local Ray ----------------------------------------------------------

def enable_run_token() -> None:
    """Turn token authentication on, with a new random token (256 bits), for the Ray this
    process starts next and everything it spawns (environment only, never a file)."""
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    _refresh_ray_auth()


def _refresh_ray_auth() -> None:
    """Make Ray's C++ side (its cached config and token) see the environment just set."""
    try:
        from ray._raylet import AuthenticationTokenLoader, Config
    except ImportError:  # a Ray without token auth: the reliability test tells
        return
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def client_token() -> str | None:
    """The token Ray would send when joining a cluster (``RAY_AUTH_MODE=token``: from
    ``RAY_AUTH_TOKEN``, else the file ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``);
    None without token mode. A token file named but unreadable is an error here (Ray would
    abort the process)."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return None
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip()
    named = os.environ.get("RAY_AUTH_TOKEN_PATH")
    path = Path(named).expanduser() if named else _DEFAULT_TOKEN_PATH
    try:
        token = path.read_text().strip()
    except OSError as e:
        if not named:
            return None
        raise RayAccessError(f"RAY_AUTH_TOKEN_PATH={named}: cannot read the Ray token "
                             f"({e.strerror or type(e).__name__})") from None
    if not token and named:
        raise RayAccessError(f"RAY_AUTH_TOKEN_PATH={named}: the Ray token file is empty")
    return token or None


# ---- probing an address before ray.init --------------------------------------------------------

def _host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``[ray://]host:port``; None for Ray's own words (``auto``, ``local``)."""
    hostport = address.strip().split("://")[-1].split("/")[0]
    if hostport in ("auto", "local", ""):
        return None
    host, sep, port = hostport.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RayAccessError(f"--ray-address {address!r}: not an address; expected HOST:PORT of "
                             f"the cluster's head node (`ray start --head` prints it)")
    return host, int(port)


def _resolve(host: str, port: int, timeout_s: float) -> None:
    """Name lookup with a time limit (``getaddrinfo`` has none of its own)."""
    err: list[BaseException] = []

    def look() -> None:
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as e:
            err.append(e)

    t = threading.Thread(target=look, daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        raise RayAccessError(f"--ray-address {host}:{port}: the host name did not resolve within "
                             f"{timeout_s:g} s")
    if err:
        raise RayAccessError(f"--ray-address {host}:{port}: unknown host ({err[0]})")


def probe_gcs(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise :class:`RayAccessError` (one line) within about ``timeout_s`` unless ``address``
    answers Ray's GCS ``GetClusterId`` RPC, sent with the token Ray would send."""
    hp = _host_port(address)
    if hp is None:
        return
    host, port = hp
    where = f"--ray-address {address}"
    t_end = time.monotonic() + timeout_s
    _resolve(host, port, timeout_s / 2)
    try:
        sock = socket.create_connection((host, port), timeout=max(0.5, t_end - time.monotonic()))
    except OSError as e:
        raise RayAccessError(f"{where}: nothing answers there ({e.strerror or type(e).__name__}); "
                             f"start the cluster (`ray start --head`) or check the address") from None
    token = client_token()
    try:
        with sock:
            answer = _grpc_call(sock, f"{host}:{port}", _GET_CLUSTER_ID, token, t_end)
    except (OSError, ValueError) as e:
        answer = f"no usable answer ({type(e).__name__}: {e})"
    if answer == "ok":
        return
    if answer == "grpc error":
        if token is None:
            raise RayAccessError(f"{where}: the Ray cluster refused to answer without its token "
                                 f"(or this is not a Ray GCS); export RAY_AUTH_MODE=token and "
                                 f"RAY_AUTH_TOKEN_PATH=<file with the cluster's token> "
                                 f"(docs/clusters.md)")
        raise RayAccessError(f"{where}: the Ray cluster refused this token (RAY_AUTH_TOKEN, "
                             f"RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token is not the cluster's; "
                             f"docs/clusters.md)")
    raise RayAccessError(f"{where}: something listens there but it is not a Ray cluster's GCS "
                         f"({answer}); give the head node's address, port 6379 unless `ray start "
                         f"--head --port` said otherwise")


def _hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """RFC 7541 section 5.1 integer with a ``prefix_bits`` prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out, value = [first | limit], value - limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    return bytes(out + [value])


def _hpack_literal(name: str, value: str) -> bytes:
    """Literal header field without indexing, new name, no Huffman coding (RFC 7541 6.2.2)."""
    n, v = name.encode(), value.encode()
    return b"\x00" + _hpack_int(len(n), 7) + n + _hpack_int(len(v), 7) + v


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def _recv_exactly(sock: socket.socket, n: int, t_end: float) -> bytes | None:
    """``n`` bytes, or None if the peer closed or ``t_end`` passed first."""
    buf = b""
    while len(buf) < n:
        left = t_end - time.monotonic()
        if left <= 0:
            return None
        sock.settimeout(left)
        try:
            chunk = sock.recv(n - len(buf))
        except TimeoutError:
            return None
        if not chunk:
            return None
        buf += chunk
    return buf


def _grpc_call(sock: socket.socket, authority: str, path: str, token: str | None,
               t_end: float) -> str:
    """One unary gRPC call with an empty request over HTTP/2 (prior knowledge, no TLS), as
    small as it gets: ``"ok"`` if a response message arrived, ``"grpc error"`` if the server
    answered with a gRPC status only (trailers-only: refused, unknown method), else what was
    wrong (not HTTP/2, closed, silent)."""
    headers = [(":method", "POST"), (":scheme", "http"), (":path", path),
               (":authority", authority), ("content-type", "application/grpc"),
               ("te", "trailers")]
    if token:
        headers.append(("authorization", f"Bearer {token}"))
    block = b"".join(_hpack_literal(k, v) for k, v in headers)
    sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0)  # preface, SETTINGS
                 + _frame(1, 0x4, 1, block)  # HEADERS, END_HEADERS
                 + _frame(0, 0x1, 1, b"\x00" * 5))  # DATA: one empty message, END_STREAM
    first = True
    while True:
        head = _recv_exactly(sock, 9, t_end)
        if head is None:
            return "it closed the connection or gave no answer in time"
        length, kind, flags = int.from_bytes(head[:3], "big"), head[3], head[4]
        stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
        if first and (kind != 4 or stream != 0 or length > 1 << 14):
            return f"it does not speak HTTP/2: {head!r}"
        first = False
        if length and _recv_exactly(sock, length, t_end) is None:
            return "it closed the connection or gave no answer in time"
        if kind == 4 and not flags & 0x1:
            sock.sendall(_frame(4, 0x1, 0))  # acknowledge the server's SETTINGS
        elif kind == 0 and stream == 1 and length > 0:
            return "ok"
        elif kind == 1 and stream == 1 and flags & 0x1:
            return "grpc error"
        elif kind == 3 and stream == 1 or kind == 7:
            return "it reset the request"


# ---- the private temporary directory of a local Ray --------------------------------------------

_OWN: dict[str, Any] = {}  # of the local Ray this process started: dir, lock fd, reaper
_REAPER = Path(__file__).with_name("ray_reaper.py")


@contextlib.contextmanager
def local_session() -> Iterator[Path]:
    """Set up a local Ray start: token authentication with a new per-run token
    (:func:`enable_run_token`), a private temporary directory (yields the path to give
    ``ray.init(_temp_dir=...)``) and the reaper that stops the Ray's processes and removes the
    directory when this process exits, even by ``kill -9``. The processes Ray starts inside
    the ``with`` block carry the reaper's marker in their environment."""
    enable_run_token()
    d = private_temp_dir()
    os.environ[MARKER_VAR] = d.name
    try:
        yield d / "r"
    except BaseException:
        remove_private_temp_dir()
        raise
    finally:
        os.environ.pop(MARKER_VAR, None)


def private_temp_dir() -> Path:
    """A new 0700 directory for a local Ray's session folder, with its reaper
    (:mod:`experiments.ray_reaper`) started. Ray makes the temp dir it is given world-writable
    (``_temp_dir=<it>/r``): the 0700 parent keeps other users out. The directory holds an
    flock while this process lives, so :func:`sweep_stale_temp_dirs` spares it."""
    import fcntl
    import subprocess
    import sys

    remove_private_temp_dir()  # of an earlier local Ray of this process (shut down by now)
    sweep_stale_temp_dirs()
    d = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
    fd = os.open(d / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    env = {k: v for k, v in os.environ.items() if k not in (MARKER_VAR, "RAY_AUTH_TOKEN")}
    reaper = subprocess.Popen([sys.executable, "-I", str(_REAPER), d.name, str(d), str(os.getpid())],
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    if not _OWN.pop("atexit", False):
        atexit.register(_at_exit)
    _OWN.update(dir=d, fd=fd, reaper=reaper, atexit=True)
    return d


def _at_exit() -> None:
    """Ray's own exit hook may run after this one (they run in reverse order of
    registration): stop Ray first, or its daemons recreate the folder while they exit."""
    if "dir" in _OWN:
        with contextlib.suppress(Exception):
            import ray

            ray.shutdown()
        remove_private_temp_dir()


def remove_private_temp_dir(wait_s: float = 5.0) -> None:
    """Remove the directory of :func:`private_temp_dir` (after ``ray.shutdown``); its reaper
    stops what is left of the Ray's processes (up to ``wait_s``)."""
    d, fd, reaper = _OWN.pop("dir", None), _OWN.pop("fd", None), _OWN.pop("reaper", None)
    if reaper is not None:
        with contextlib.suppress(OSError):
            reaper.stdin.close()
        with contextlib.suppress(Exception):
            reaper.wait(timeout=wait_s)
    if isinstance(fd, int):
        with contextlib.suppress(OSError):
            os.close(fd)
    if isinstance(d, Path):
        shutil.rmtree(d, ignore_errors=True)


def sweep_stale_temp_dirs() -> list[Path]:
    """Remove this user's ``temponas-ray-*`` directories whose driver is gone (their lock is
    free: the kernel drops an flock with its process; normally the reaper removed them
    already). Returns what was removed."""
    import fcntl

    removed = []
    for d in Path(tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*"):
        try:
            if d.is_symlink() or not d.is_dir() or d.stat().st_uid != os.getuid():
                continue
            fd = os.open(d / ".lock", os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # its driver is alive
            os.close(fd)
            continue
        try:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
        finally:
            os.close(fd)
    return removed
