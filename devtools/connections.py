"""Which process holds which TCP connections, read from /proc (Linux; no psutil here).

Why: with several API processes sharing one listening socket, only the kernel knows which
process accepted a client; tests and benchmarks ask it to check that a storm spreads over the
processes, and that each process has opened its Redis connections before they count it ready.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

ESTABLISHED = "01"  # the `st` column of /proc/net/tcp
LISTEN = "0A"


def children(pid: int) -> list[int]:
    """Direct child processes, multiprocessing's resource tracker excluded."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
            cmdline = Path(f"/proc/{entry.name}/cmdline").read_bytes()
        except OSError:
            continue  # it ended meanwhile
        if (
            int(stat[stat.rindex(")") + 2 :].split()[1]) == pid
            and b"resource_tracker" not in cmdline
        ):
            found.append(int(entry.name))
    return sorted(found)


def _established_inodes(port: int, *, remote: bool = False) -> set[int]:
    """Socket inodes of established TCP connections whose local (or remote) port is `port`."""
    column = 2 if remote else 1
    inodes: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == ESTABLISHED and int(fields[column].rsplit(":", 1)[1], 16) == port:
                    inodes.add(int(fields[9]))
    return inodes


def accepting(pid: int, port: int) -> bool:
    """Whether `pid` watches the socket listening on `port` in one of its epoll sets: its
    event loop is serving, not only started. A process still in its startup (or busy) is
    woken by no connection, and a storm's clients all land on the processes that are."""
    listening = {
        int(fields[9])
        for table in ("/proc/net/tcp", "/proc/net/tcp6")
        if Path(table).exists()
        for fields in (line.split() for line in Path(table).read_text().splitlines()[1:])
        if fields[3] == LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port
    }
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:[eventpoll]":
                    continue
                for line in Path(f"/proc/{pid}/fdinfo/{fd}").read_text().splitlines():
                    # "tfd: 7 events: 19 data: 7 pos:0 ino:1f4a sdev:8": ino is hexadecimal
                    watched = line.startswith("tfd:") and line.split("ino:")[1].split()[0]
                    if watched and int(watched, 16) in listening:
                        return True
    return False


def serving_processes(supervisor: int, count: int, port: int, redis_port: int) -> list[int]:
    """The supervisor's `count` API processes once every one has finished its startup: each
    holds its event hub's Redis connection (opened in the lifespan) and its event loop watches
    the listening socket. Otherwise []: /healthz answering means only that one process does,
    and a storm sent then lands whole on the processes already serving."""
    pids = children(supervisor)
    if len(pids) != count:
        return []
    redis = connections_per_pid(pids, redis_port, remote=True)
    ready = all(redis.values()) and all(accepting(pid, port) for pid in pids)
    return pids if ready else []


def connections_per_pid(pids: list[int], port: int, *, remote: bool = False) -> dict[int, int]:
    """Established TCP connections each process holds with local (or remote) port `port`."""
    inodes = _established_inodes(port, remote=remote)
    counts = {}
    for pid in pids:
        count = 0
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:[") and int(link[8:-1]) in inodes:
                        count += 1
        counts[pid] = count
    return counts


def server_of(client_port: int, pids: list[int], port: int) -> int | None:
    """Which of `pids` accepted the connection a local client made from `client_port` to
    `port` (the process holding the server side of it), or None."""
    inodes: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local = int(fields[1].rsplit(":", 1)[1], 16)
                remote = int(fields[2].rsplit(":", 1)[1], 16)
                if fields[3] == ESTABLISHED and (local, remote) == (port, client_port):
                    inodes.add(int(fields[9]))
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:[") and int(link[8:-1]) in inodes:
                        return pid
    return None


def peer_ports(port: int, peer_host: str) -> set[int]:
    """Ports on `peer_host` (IPv4) of TCP connections to local port `port`, in any state,
    TIME_WAIT included: every connection a peer opened lately, not only those still open."""
    wanted = "".join(f"{int(octet):02X}" for octet in reversed(peer_host.split(".")))
    ports: set[int] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            local, remote = line.split()[1:3]
            remote_host, remote_port = remote.split(":")
            if int(local.rsplit(":", 1)[1], 16) == port and remote_host == wanted:
                ports.add(int(remote_port, 16))
    return ports
