"""Reconnect storms against real uvicorn processes: every stream opened at the same moment
(what browsers do after a restart) is answered 200 even when Redis is slow and the pool tiny;
a real Redis outage is answered 503 with `Retry-After` only while it lasts; several API
processes on one port share a storm and each of their clients gets every event."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools import stack
from devtools.connections import connections_per_pid, serving_processes
from tests.conftest import OwnRedisApi
from tests.helpers import sse
from tests.helpers.jobs import create_job, stream_ids, sync_store
from tests.helpers.memory import MB, rss_bytes
from tests.helpers.proxy import CuttableProxy
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.integration
SSE_ACCEPT = "Accept: text/event-stream"


def progress_paths(redis_url: str, token_id: str, jobs: int, clients: int) -> list[str]:
    job_ids = [create_job(redis_url, token_id) for _ in range(jobs)]
    return [f"/tokens/analysis-progress/{job_ids[n % jobs]}" for n in range(clients)]


@pytest.fixture
def far_redis(redis_url: str) -> Iterator[tuple[str, CuttableProxy]]:
    """The session's Redis behind a proxy that adds 10 ms each way to every exchange."""
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    proxy = CuttableProxy(port)
    yield f"redis://127.0.0.1:{proxy.port}/0", proxy
    proxy.close()


def test_storm_when_redis_is_slow_and_the_pool_tiny_then_every_start_is_answered_200(
    stack_env: dict[str, str],
    workdir: Path,
    redis_url: str,
    far_redis: tuple[str, CuttableProxy],
    token_id: str,
) -> None:
    # Before stream starts were batched, each one held a pooled connection for two round trips
    # (20 ms each here): with a pool of 2, 300 starts needed 6 s and most waited out the
    # pool's 2 s and got 503.
    slow_url, proxy = far_redis
    paths = progress_paths(redis_url, token_id, jobs=30, clients=300)
    proxy.delay(0.010)
    api = stack.api_proc(
        {**stack_env, "REDIS_URL": slow_url, "REDIS_MAX_CONNECTIONS": "2"}, workdir
    )
    api.start()
    try:
        starts = sse.start_at_once(f"http://127.0.0.1:{api.name.split(':')[1]}", paths)
    finally:
        api.stop()
    statuses = [start.status for start in starts]
    assert statuses.count(200) == 300, {code: statuses.count(code) for code in set(statuses)}
    for path, start in zip(paths, starts, strict=True):
        assert start.first_data is not None
        assert json.loads(start.first_data)["job_id"] == path.rsplit("/", 1)[1]


def test_storm_when_redis_is_down_then_503_with_retry_after_until_it_is_back(
    api_on_own_redis: OwnRedisApi, token_id: str
) -> None:
    paths = progress_paths(api_on_own_redis.redis_url, token_id, jobs=10, clients=100)
    api_on_own_redis.redis.kill()
    down = sse.start_at_once(api_on_own_redis.api_url, paths)
    assert {start.status for start in down} == {503}
    assert all(start.headers.get("retry-after", "").isdigit() for start in down)
    api_on_own_redis.redis.start()
    back = sse.start_at_once(api_on_own_redis.api_url, paths)
    assert [start.status for start in back] == [200] * 100


def test_api_processes_when_a_storm_hits_two_then_both_serve_and_every_client_gets_every_event(
    stack_env: dict[str, str], redis_url: str, workdir: Path, token_id: str
) -> None:
    api = stack.api_proc({**stack_env, "REDIS_URL": redis_url}, workdir, processes=2).start()
    port = int(api.name.split(":")[1])
    redis_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    try:
        # Both processes through their startup: each holds its event hub's Redis subscription
        # and its event loop watches the listening socket.
        workers = stack.poll(
            lambda: serving_processes(api.pid, 2, port, redis_port),
            timeout=30,
            what="two API processes",
        )
        job_ids = [create_job(redis_url, token_id) for _ in range(4)]
        received: list[list[sse.SseEvent]] = [[] for _ in range(60)]
        readers = [
            sse.collect(
                f"http://127.0.0.1:{port}/tokens/analysis-progress/{job_ids[n % 4]}", received[n]
            )
            for n in range(60)
        ]
        wait_until(lambda: all(received), timeout=30, what="60 streams with their first event")
        held = connections_per_pid(workers, port)
        assert sum(held.values()) == 60
        assert all(count > 0 for count in held.values()), f"one process took them all: {held}"

        store = sync_store(redis_url)
        for progress in range(10, 100, 10):
            for job_id in job_ids:
                store.update(
                    job_id, token_id, status="processing", progress=progress, stage="analyzing"
                )
        for job_id in job_ids:
            store.update(job_id, token_id, status="completed", progress=100, stage="done")
        for reader in readers:
            reader.join(30)
        for n, events in enumerate(received):
            stored = stream_ids(redis_url, job_ids[n % 4])
            assert [event.id for event in events] == stored, f"client {n}"
    finally:
        api.stop()


def test_storm_when_many_clients_never_read_then_readers_get_every_event_and_memory_is_bounded(
    stack_env: dict[str, str], redis_url: str, workdir: Path, token_id: str
) -> None:
    api = stack.api_proc({**stack_env, "REDIS_URL": redis_url}, workdir).start()
    port = int(api.name.split(":")[1])
    job_id = create_job(redis_url, token_id)
    path = f"/tokens/analysis-progress/{job_id}"
    stalled: list[socket.socket] = []
    try:
        rss_before = rss_bytes(api.pid)
        for _ in range(50):  # never read past their first bytes: small buffers, full at once
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", port))
            sock.sendall(
                f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode()
            )
            stalled.append(sock)
        received: list[list[sse.SseEvent]] = [[] for _ in range(100)]
        readers = [sse.collect(f"http://127.0.0.1:{port}{path}", out) for out in received]
        wait_until(lambda: all(received), timeout=30, what="100 readers' first events")
        # 150 events of 16 KB: far beyond what the stalled sockets and their queues hold.
        store = sync_store(redis_url)
        for n in range(150):
            store.update(
                job_id,
                token_id,
                status="processing",
                progress=n * 99 // 150,
                stage="analyzing",
                message="x" * 16384,
            )
        store.update(job_id, token_id, status="completed", progress=100, stage="done")
        for reader in readers:
            reader.join(30)
        stored = stream_ids(redis_url, job_id)
        for events in received:
            ids = [event.id for event in events]
            assert ids == stored[stored.index(ids[0]) :]
        growth = (rss_bytes(api.pid) - rss_before) / MB
        assert growth < 64, f"the API grew {growth:.0f} MB holding 50 clients that never read"
    finally:
        for sock in stalled:
            sock.close()
        api.stop()
