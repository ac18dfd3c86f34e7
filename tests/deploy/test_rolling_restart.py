"""A deploy under load: `systemctl reload yousync-api` (SIGHUP to uvicorn's supervisor) while
clients follow live jobs through nginx. Every old process ends its streams with the farewell,
nginx ends each client's response, the client reconnects with Last-Event-ID like an
EventSource, and lands on a new process: every event exactly once, every answer 200.

bench/bench_deploy.py runs the same with 2,000 clients; here 24 keep the suite fast.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from devtools import stack
from devtools.connections import children
from tests.helpers.jobs import create_job, stream_ids, sync_store
from tests.helpers.sse import parse_lines

PROXY_ADDR = "127.0.0.2"
CLIENTS = 24
JOBS = 6
TOKEN = "deploy-test"


@dataclass
class Follower:
    """One browser tab's EventSource on one job, through the proxy."""

    url: str
    ids: list[str] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    done: bool = False
    error: str = ""

    def run(self, stop: threading.Event) -> None:
        last_id = ""
        with httpx.Client(timeout=30) as client:
            while not stop.is_set() and not self.done:
                headers = {"Accept": "text/event-stream"}
                if last_id:
                    headers["Last-Event-ID"] = last_id
                try:
                    with client.stream("GET", self.url, headers=headers) as response:
                        self.statuses.append(response.status_code)
                        if response.status_code != 200:
                            time.sleep(0.2)
                            continue
                        for event in parse_lines(response.iter_lines()):
                            if event.id:
                                self.ids.append(event.id)
                                last_id = event.id
                            if event.json.get("status") == "completed":
                                self.done = True
                                return
                except httpx.HTTPError as exc:  # a connect refused mid-restart: retry
                    self.error = repr(exc)
                # The stream ended (the farewell): reconnect soon, as after `retry:`.
                time.sleep(0.1)


@pytest.fixture
def proxied_stack(backend_env: dict[str, str], workdir: Path) -> Iterator[tuple[stack.Proc, str]]:
    """Its own two-process API and nginx: the restart must not disturb the session's."""
    api = stack.api_proc(backend_env, workdir, processes=2, forwarded_allow_ips=PROXY_ADDR)
    api.start()
    proxy = stack.proxy_proc(
        workdir,
        backend_env,
        api_port=int(api.name.split(":")[1]),
        flower_port=stack.free_port(),
        proxy_addr=PROXY_ADDR,
    ).start()
    try:
        yield api, f"http://127.0.0.1:{proxy.name.split(':')[1]}"
    finally:
        proxy.stop()
        api.stop()


def test_rolling_restart_through_nginx_when_clients_follow_jobs_then_each_gets_every_event_once(
    proxied_stack: tuple[stack.Proc, str], redis_url: str
) -> None:
    api, base = proxied_stack
    stack.poll(lambda: len(children(api.pid)) == 2, timeout=30, what="two API processes")
    before = set(children(api.pid))
    store = sync_store(redis_url)
    jobs = [create_job(redis_url, TOKEN) for _ in range(JOBS)]
    followers = [
        Follower(f"{base}/tokens/analysis-progress/{jobs[i % JOBS]}") for i in range(CLIENTS)
    ]
    stop = threading.Event()
    threads = [threading.Thread(target=f.run, args=(stop,), daemon=True) for f in followers]
    for thread in threads:
        thread.start()
    stack.poll(lambda: all(f.ids for f in followers), timeout=20, what="every client's snapshot")

    progress = 0

    def write_round() -> None:
        nonlocal progress
        progress += 1
        for job_id in jobs:
            store.update(job_id, TOKEN, status="processing", progress=progress, stage="analyzing")

    try:
        write_round()
        os.kill(api.pid, signal.SIGHUP)  # what `systemctl reload yousync-api` sends
        # Events keep coming while uvicorn replaces each process in turn.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            write_round()
            now = set(children(api.pid))
            if len(now) == 2 and not now & before:
                break
            time.sleep(0.2)
        assert not set(children(api.pid)) & before, "uvicorn did not replace its processes"
        for _ in range(3):
            write_round()
            time.sleep(0.2)
        for job_id in jobs:
            store.update(job_id, TOKEN, status="completed", progress=100, stage="done")
        stack.poll(lambda: all(f.done for f in followers), timeout=30, what="every client done")
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)

    expected = {job_id: stream_ids(redis_url, job_id) for job_id in jobs}
    reconnected = 0
    for index, follower in enumerate(followers):
        assert follower.ids == expected[jobs[index % JOBS]], (index, follower.error)
        assert set(follower.statuses) == {200}, follower.statuses
        reconnected += len(follower.statuses) > 1
    # The restart ended the streams of both old processes: every client came back at least once.
    assert reconnected == CLIENTS
