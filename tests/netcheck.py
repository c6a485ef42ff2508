"""Which processes descend from a pid and which TCP sockets they listen on (from /proc):
tests check that Ray's servers listen on loopback only."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(p.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def listening(pids: set[int]) -> list[tuple[str, int]]:
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        except OSError:
            continue
    out = []
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for ln in lines:
            f = ln.split()
            if f[3] != "0A" or f[9] not in inodes:  # LISTEN
                continue
            hexip, port = f[1].split(":")
            raw = b"".join(bytes.fromhex(hexip[i:i + 8])[::-1] for i in range(0, len(hexip), 8))
            ip = ipaddress.ip_address(raw)
            if v6 and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            out.append((str(ip), int(port, 16)))
    return out


def exposed(pid: int) -> list[tuple[str, int]]:
    """Listening sockets of ``pid``'s descendants that are not on loopback."""
    return sorted({(ip, port) for ip, port in listening(descendants(pid))
                   if not ipaddress.ip_address(ip).is_loopback})
