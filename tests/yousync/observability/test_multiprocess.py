"""One scrape reports every API process of a host: a real `uvicorn --workers 2` API in
prometheus-client's multiprocess mode, requests and SSE clients held on both processes, scraped
through a connection each process accepted; a process leaving cleanly, and one SIGKILLed."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from devtools import stack
from devtools.connections import children, server_of
from tests.helpers.jobs import create_job
from tests.helpers.wait import wait_until
from yousync.observability import multiprocess

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


class Connection:
    """One keep-alive HTTP/1.1 connection: the test knows which process accepted it."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""

    @property
    def local_port(self) -> int:
        return int(self.sock.getsockname()[1])

    def _read_until(self, marker: bytes) -> None:
        while marker not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection closed; got {self.buffer[:300]!r}")
            self.buffer += chunk

    def get(self, path: str) -> tuple[int, str]:
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        self._read_until(b"\r\n\r\n")
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        length = next(
            int(line.split(":", 1)[1])
            for line in lines
            if line.lower().startswith("content-length")
        )
        while len(self.buffer) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed mid-body")
            self.buffer += chunk
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(lines[0].split()[1]), body.decode()

    def stream(self, path: str) -> None:
        """Start an SSE stream and wait for its first event: the hub counts it by then."""
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        self._read_until(b"data:")

    def close(self) -> None:
        self.sock.close()


@dataclass
class Host:
    """The API as a production host runs it: a supervisor, two processes, one port."""

    proc: stack.Proc
    port: int
    metrics_dir: Path
    held: dict[int, list[Connection]] = field(default_factory=dict)

    @property
    def pids(self) -> list[int]:
        return children(self.proc.pid)

    def connect(self) -> tuple[int, Connection]:
        """A new connection, and the pid of the process that accepted it."""
        conn = Connection(self.port)
        # Answered, so accepted by now; not /healthz, which the tests count.
        status, _ = conn.get("/metrics")
        assert status == 200
        pid = server_of(conn.local_port, self.pids, self.port)
        assert pid is not None
        self.held.setdefault(pid, []).append(conn)
        return pid, conn

    def connection_to(self, pid: int) -> Connection:
        """A keep-alive connection that process `pid` accepted (opened until one is)."""
        for _ in range(200):
            for conn in self.held.get(pid, []):
                return conn
            self.connect()
        raise AssertionError(f"200 connections and none went to {pid}")

    def get(self, pid: int, path: str) -> tuple[int, str]:
        """A request answered by process `pid`, on a connection it accepted earlier; one the
        server closed meanwhile (uvicorn's keep-alive timeout, 5 s) is replaced."""
        conn = self.connection_to(pid)
        try:
            return conn.get(path)
        except (ConnectionError, OSError):
            self.held[pid].remove(conn)
            conn.close()
            return self.connection_to(pid).get(path)

    def scrape(self, pid: int) -> Samples:
        """/metrics as answered by process `pid`: name -> labels -> value."""
        status, text = self.get(pid, "/metrics")
        assert status == 200, text
        samples: Samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = tuple(sorted(sample.labels.items()))
                samples.setdefault(sample.name, {})[labels] = sample.value
        return samples

    def forget(self, pid: int) -> None:
        """Close the connections of a process that is gone."""
        for conn in self.held.pop(pid, []):
            conn.close()

    def close(self) -> None:
        for conns in self.held.values():
            for conn in conns:
                conn.close()
        self.held.clear()


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


def healthz(samples: Samples) -> float:
    """GET /healthz answered 200, as counted by the scrape."""
    return value(
        samples, "yousync_http_requests_total", method="GET", route="/healthz", status="200"
    )


@pytest.fixture
def host(backend_env: dict[str, str], workdir: Path, tmp_path: Path) -> Iterator[Host]:
    metrics_dir = tmp_path / "api-metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_1.db").write_bytes(b"stale")  # emptied before the start
    proc = stack.api_proc(backend_env, workdir, processes=2, metrics_dir=metrics_dir).start()
    api = Host(proc, int(proc.name.split(":")[1]), metrics_dir)
    try:
        assert not (metrics_dir / "counter_1.db").exists()

        # Both processes through their startup, each with its hub subscribed: as one scrape
        # (any process's) says, which is what is under test here.
        def serving() -> bool:
            if len(api.pids) != 2:
                return False
            samples = api.scrape(api.connect()[0])
            return (
                value(samples, "yousync_api_processes")
                == value(samples, "yousync_hub_connected")
                == 2
            )

        wait_until(serving, timeout=30, what="two API processes with their hubs subscribed")
        yield api
    finally:
        api.close()
        proc.stop()


def spread(api: Host) -> tuple[int, int]:
    """The two processes' pids, once each has accepted a connection."""
    first, second = api.pids
    api.connection_to(first)
    api.connection_to(second)
    return first, second


def test_scrape_when_requests_spread_over_two_processes_then_either_process_reports_them_all(
    host: Host, redis_client: redis.Redis
) -> None:
    first, second = spread(host)
    before = healthz(host.scrape(first))
    sent = 0
    for pid in (first, second, first, second, second):
        for _ in range(3):
            status, _ = host.get(pid, "/healthz")
            assert status == 200
            sent += 1

    for pid in (first, second):
        # The sum over both processes' files, once: neither only the answering process's
        # requests nor its own counted twice (its registry and its file).
        assert healthz(host.scrape(pid)) == before + sent, pid
    # The processes' own series describe the host, not whichever process answered.
    samples = host.scrape(first)
    assert not any(name.startswith("process_") for name in samples)
    assert value(samples, "yousync_api_resident_memory_bytes") > 0
    # Cluster series still come from Redis, once.
    assert value(samples, "yousync_cluster_metrics_up") == 1


def test_scrape_when_sse_clients_on_both_processes_then_counted_and_a_clean_exit_takes_its_own_out(
    host: Host, redis_url: str, redis_client: redis.Redis, token_id: str
) -> None:
    job_id = create_job(redis_url, token_id)
    first, second = spread(host)
    streams: dict[int, list[Connection]] = {first: [], second: []}
    for _ in range(200):
        if all(len(held) >= 2 for held in streams.values()):
            break
        conn = Connection(host.port)
        conn.stream(f"/tokens/analysis-progress/{job_id}")
        pid = server_of(conn.local_port, host.pids, host.port)
        assert pid in streams
        streams[pid].append(conn)
    total = sum(map(len, streams.values()))
    try:
        for pid in (first, second):
            assert value(host.scrape(pid), "yousync_sse_clients") == total, pid
        counted = healthz(host.scrape(second))

        os.kill(first, signal.SIGTERM)  # this process alone leaves, cleanly
        wait_until(lambda: first not in host.pids, timeout=15, what="the process to exit")
        host.forget(first)
        # It removed its live-gauge files itself, on its way out (before any scrape).
        assert not list(host.metrics_dir.glob(f"gauge_live*_{first}.db"))
        assert list(host.metrics_dir.glob(f"counter_{first}.db"))

        # Its streams ended with it; the other process's are still counted, now alone.
        after = host.scrape(second)
        assert value(after, "yousync_sse_clients") == len(streams[second])
        # What it counted stays counted: a counter of the host never goes back.
        assert healthz(after) >= counted
        # The supervisor replaces it; the replacement counts as a process, with no clients.
        wait_until(
            lambda: value(host.scrape(second), "yousync_api_processes") == 2,
            timeout=30,
            what="the supervisor's replacement process",
        )
        assert value(host.scrape(second), "yousync_sse_clients") == len(streams[second])
    finally:
        for held in streams.values():
            for conn in held:
                conn.close()


def test_scrape_when_a_process_is_sigkilled_then_its_live_gauges_stop_counting(
    host: Host, redis_url: str, redis_client: redis.Redis, token_id: str
) -> None:
    """No lifespan shutdown runs: the next scrape finds its pid gone and drops its files."""
    job_id = create_job(redis_url, token_id)
    first, second = spread(host)
    host.connection_to(first).stream(f"/tokens/analysis-progress/{job_id}")
    assert value(host.scrape(second), "yousync_sse_clients") == 1

    os.kill(first, signal.SIGKILL)
    host.forget(first)
    wait_until(lambda: first not in host.pids, timeout=15, what="the supervisor to reap it")
    assert list(host.metrics_dir.glob(f"gauge_live*_{first}.db"))  # nobody removed them yet

    assert value(host.scrape(second), "yousync_sse_clients") == 0
    assert not list(host.metrics_dir.glob(f"gauge_live*_{first}.db"))


def test_check_when_the_directory_is_in_settings_but_not_the_environment_then_refused(
    tmp_path: Path,
) -> None:
    """This test process has no PROMETHEUS_MULTIPROC_DIR in its environment (as when the
    variable is only in .env): prometheus-client keeps in-memory values, so serving would
    report one process while the operator believes it reports the host."""
    assert not multiprocess.enabled()
    with pytest.raises(RuntimeError, match="not in the process environment"):
        multiprocess.check(tmp_path)
    multiprocess.check(None)


def test_prepare_dir_when_files_remain_from_a_previous_start_then_removed(tmp_path: Path) -> None:
    directory = tmp_path / "metrics"
    multiprocess.prepare_dir(directory)
    for name in ("counter_11.db", "gauge_livesum_11.db", "histogram_12.db"):
        (directory / name).write_bytes(b"old")
    multiprocess.prepare_dir(directory)
    assert directory.is_dir() and not list(directory.iterdir())
