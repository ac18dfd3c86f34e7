"""SSE delivery over real uvicorn processes: order and exactly-once under concurrent writes,
slow-client isolation, resume on another API process, a Redis restart under live streams, the
token feed, shutdown and content negotiation."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import redis

from devtools import stack
from tests.conftest import OwnRedisApi
from tests.helpers import sse
from tests.helpers.jobs import create_job, stream_ids, sync_store
from tests.helpers.wait import wait_until
from yousync.api.streaming.events import parse_stream_id
from yousync.api.streaming.progress_stream import jittered_ping, jittered_retry


def write_events(
    redis_url: str, job_id: str, token_id: str, count: int, pause: float = 0, pad: int = 0
) -> None:
    store = sync_store(redis_url)
    for index in range(count):
        store.update(
            job_id,
            token_id,
            status="processing",
            progress=index * 99 // count,
            stage="analyzing",
            message=f"step {index} " + "x" * pad,
        )
        if pause:
            time.sleep(pause)  # not a wait: the writer's pace, so clients join mid-burst
    store.update(job_id, token_id, status="completed", progress=100, stage="done", message="done")


TOKEN_FEED_IDLE = 5.0  # seconds of silence after which a test's token-feed reader hangs up


def test_stream_when_clients_join_during_concurrent_writes_then_each_gets_every_later_event_once(
    api_url: str, redis_url: str, token_id: str
) -> None:
    job_id = create_job(redis_url, token_id)
    url = f"{api_url}/tokens/analysis-progress/{job_id}"
    received: list[list[sse.SseEvent]] = [[] for _ in range(6)]
    writer = threading.Thread(target=write_events, args=(redis_url, job_id, token_id, 150, 0.004))
    writer.start()
    threads = []
    for out in received:  # clients connect at different moments of the write burst
        threads.append(sse.collect(url, out))
        time.sleep(0.05)  # not a wait: spreads the clients' arrivals over the burst
    writer.join()
    for thread in threads:
        thread.join(30)
    stored = stream_ids(redis_url, job_id)
    for events in received:
        ids = [event.id for event in events]
        assert ids, "every client gets at least the terminal event"
        assert ids == stored[stored.index(ids[0]) :], "a gap-free, duplicate-free suffix, in order"
        assert events[-1].json["status"] == "completed"


def test_stream_when_one_client_never_reads_then_others_are_not_delayed_and_it_loses_nothing(
    api_url: str, redis_url: str, token_id: str
) -> None:
    job_id = create_job(redis_url, token_id)
    target = urlsplit(api_url)
    clients = sse.hub_clients(api_url)
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect((target.hostname, target.port))
    stalled.sendall(
        f"GET /tokens/analysis-progress/{job_id} HTTP/1.1\r\nHost: x\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    wait_until(
        lambda: sse.hub_clients(api_url) > clients,
        timeout=10,
        what="the stalled client registered before the burst",
    )
    good: list[sse.SseEvent] = []
    reader = sse.collect(f"{api_url}/tokens/analysis-progress/{job_id}", good)
    wait_until(lambda: good, timeout=10, what="the reading client's first event")
    # 150 events of 16 KB (within the Stream's 200-entry bound): far more than the stalled
    # socket's buffers and its 64-entry queue hold, so its queue overflows into a resync.
    write_events(redis_url, job_id, token_id, 150, pad=16384)
    reader.join(20)
    assert not reader.is_alive(), "the reading client finished while the other one never read"
    assert good[-1].json["status"] == "completed"

    # Now the stalled client reads: it gets the whole history after its first event, in order.
    stalled.settimeout(10)
    raw = b""
    while b'"status":"completed"' not in raw:
        chunk = stalled.recv(1 << 20)
        assert chunk, "server closed the slow client before catching it up"
        raw += chunk
    stalled.close()
    body = raw.split(b"\r\n\r\n", 1)[1].decode(errors="replace")
    ids = [line[4:].strip() for line in body.splitlines() if line.startswith("id: ")]
    stored = stream_ids(redis_url, job_id)
    assert ids == stored[stored.index(ids[0]) :]


@pytest.fixture
def second_api(backend_env: dict[str, str], workdir: Path) -> Iterator[str]:
    proc = stack.api_proc(backend_env, workdir).start()
    yield f"http://127.0.0.1:{proc.name.split(':')[1]}"
    proc.stop()


def test_stream_when_resumed_on_another_api_process_then_no_gap(
    api_url: str, second_api: str, redis_url: str, token_id: str
) -> None:
    job_id = create_job(redis_url, token_id)
    path = f"/tokens/analysis-progress/{job_id}"
    writer = threading.Thread(target=write_events, args=(redis_url, job_id, token_id, 200, 0.005))
    first: list[sse.SseEvent] = []
    writer.start()
    for event in sse.stream(f"{api_url}{path}"):
        first.append(event)
        if len(first) == 20:
            break
    second = list(sse.stream(f"{second_api}{path}", headers={"Last-Event-ID": first[-1].id or ""}))
    writer.join()
    ids = [event.id for event in first + second]
    stored = stream_ids(redis_url, job_id)
    assert ids == stored[stored.index(ids[0]) :]


def test_hub_when_redis_restarts_under_live_streams_then_clients_resume_without_gap(
    api_on_own_redis: OwnRedisApi, token_id: str
) -> None:
    own_redis, redis_url, api_url = (
        api_on_own_redis.redis,
        api_on_own_redis.redis_url,
        api_on_own_redis.api_url,
    )
    job_id = create_job(redis_url, token_id)
    received: list[sse.SseEvent] = []
    reader = sse.collect(f"{api_url}/tokens/analysis-progress/{job_id}", received, timeout=60)
    wait_until(lambda: received, timeout=10, what="the stream's first event")
    store = sync_store(redis_url)
    store.update(job_id, token_id, status="processing", progress=10, stage="uploading")

    own_redis.kill()
    outage = httpx.get(f"{api_url}/tokens/analysis-result/{job_id}")
    assert outage.status_code == 503
    assert outage.json()["code"] == "redis_unavailable"
    own_redis.start()

    store = sync_store(redis_url)
    for progress in (20, 30, 40):
        store.update(job_id, token_id, status="processing", progress=progress, stage="analyzing")
    store.update(job_id, token_id, status="completed", progress=100, stage="done")
    reader.join(30)
    assert not reader.is_alive()
    ids = [event.id for event in received]
    stored = stream_ids(redis_url, job_id)
    assert ids == stored[stored.index(ids[0]) :], "events written after the restart all arrive"
    assert httpx.get(f"{api_url}/tokens/analysis-result/{job_id}").status_code == 200


def test_token_stream_when_jobs_progress_then_events_of_every_job_arrive_with_job_ids(
    api_url: str, redis_url: str, token_id: str
) -> None:
    received: list[sse.SseEvent] = []
    clients = sse.hub_clients(api_url)
    sse.collect(f"{api_url}/tokens/{token_id}/analysis-progress", received, timeout=TOKEN_FEED_IDLE)
    wait_until(
        lambda: sse.hub_clients(api_url) > clients,
        timeout=10,
        what="the token feed registered before the jobs start",
    )
    first, second = create_job(redis_url, token_id), create_job(redis_url, token_id)
    create_job(redis_url, "someone-else")
    write_events(redis_url, first, token_id, 5)
    write_events(redis_url, second, token_id, 5)
    wait_until(
        lambda: sum(e.json["status"] == "completed" for e in received) >= 2,
        timeout=10,
        what="both jobs completed on the token feed",
    )
    assert {event.json["job_id"] for event in received} == {first, second}
    assert len({event.id for event in received}) == len(received)

    # Resume the token feed after an id: exactly what came later.
    middle = received[len(received) // 2]
    replay: list[sse.SseEvent] = []
    sse.collect(
        f"{api_url}/tokens/{token_id}/analysis-progress",
        replay,
        headers={"Last-Event-ID": middle.id or ""},
        timeout=TOKEN_FEED_IDLE,
    )
    later = received[len(received) // 2 + 1 :]
    wait_until(lambda: len(replay) >= len(later), timeout=10, what="the replay")
    assert [e.id for e in replay] == [e.id for e in later]


def test_token_stream_when_connecting_fresh_then_first_events_are_each_jobs_latest_state(
    api_url: str, redis_url: str, token_id: str
) -> None:
    done = create_job(redis_url, token_id)
    write_events(redis_url, done, token_id, 3)
    waiting = create_job(redis_url, token_id)
    received: list[sse.SseEvent] = []
    sse.collect(f"{api_url}/tokens/{token_id}/analysis-progress", received, timeout=TOKEN_FEED_IDLE)
    wait_until(lambda: len(received) >= 2, timeout=10, what="each job's latest state")
    assert [(e.json["job_id"], e.json["status"]) for e in received] == [
        (done, "completed"),
        (waiting, "queued"),
    ]


def test_result_when_accept_is_event_stream_then_answers_the_stream(
    api_url: str, redis_url: str, token_id: str
) -> None:
    job_id = create_job(redis_url, token_id)
    write_events(redis_url, job_id, token_id, 2)
    events = list(sse.stream(f"{api_url}/tokens/analysis-result/{job_id}"))
    assert events[-1].json["status"] == "completed"
    with httpx.stream("GET", f"{api_url}/tokens/analysis-progress/{job_id}") as response:
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["x-accel-buffering"] == "no"


def test_stream_when_api_process_shuts_down_then_client_gets_farewell_and_resumes_elsewhere(
    backend_env: dict[str, str],
    workdir: Path,
    redis_url: str,
    redis_client: redis.Redis,
    token_id: str,
) -> None:
    api = stack.api_proc(backend_env, workdir).start()
    url = f"http://127.0.0.1:{api.name.split(':')[1]}"
    try:
        job_id = create_job(redis_url, token_id)
        sync_store(redis_url).update(job_id, token_id, status="processing", progress=5)
        lines: list[str] = []
        with (
            httpx.Client(timeout=30) as client,
            client.stream("GET", f"{url}/tokens/analysis-progress/{job_id}") as response,
        ):
            for line in response.iter_lines():
                lines.append(line)
                # Stop once the replay reached the newest event: stopping at the first one
                # would race the second one's delivery against the shutdown.
                if line.startswith("data:") and '"processing"' in line:
                    threading.Thread(target=api.stop, daemon=True).start()  # SIGTERM
        # The stream ended on its own when uvicorn shut down, with a farewell comment.
        assert any(line.startswith(": server shutting down") for line in lines), lines
        last_id = [line[4:] for line in lines if line.startswith("id: ")][-1]
        api.stop()
        api.start()
        sync_store(redis_url).update(job_id, token_id, status="completed", progress=100)
        rest = list(
            sse.stream(
                f"{url}/tokens/analysis-progress/{job_id}", headers={"Last-Event-ID": last_id}
            )
        )
        # Nothing before the resume point again. The restart may take longer than the test
        # stack's STALL_SECONDS, in which case the new process rightly adds a `stalled` event.
        assert all(parse_stream_id(event.id) > parse_stream_id(last_id) for event in rest)
        assert [e.json["status"] for e in rest if not e.json["stalled"]] == ["completed"]
    finally:
        api.stop()


def test_retry_when_many_clients_start_then_delays_spread_over_half_to_one_and_a_half_base() -> (
    None
):
    delays = [jittered_retry(3000) for _ in range(2000)]
    assert 1500 <= min(delays) < 1650 and 4350 < max(delays) <= 4500
    # Spread, not lumped: each third of the window gets a fair share of the reconnects.
    thirds = [sum(low <= d < low + 1000 for d in delays) for low in (1500, 2500, 3500)]
    assert all(500 < count < 830 for count in thirds), thirds


def test_stream_when_an_event_is_unreadable_then_it_is_skipped_and_the_stream_goes_on(
    api_url: str, redis_url: str, token_id: str
) -> None:
    # A newer release mid-deploy may write a stage this one does not know.
    job_id = create_job(redis_url, token_id)
    url = f"{api_url}/tokens/analysis-progress/{job_id}"
    live: list[sse.SseEvent] = []
    reader = sse.collect(url, live)
    wait_until(lambda: live, timeout=10, what="the first event")
    store = sync_store(redis_url)
    store.update(job_id, token_id, status="processing", progress=10, stage="uploading")
    store.update(job_id, token_id, status="processing", progress=20, stage="from-the-future")
    store.update(job_id, token_id, status="completed", progress=100, stage="done")
    reader.join(20)
    assert [event.json["progress"] for event in live] == [0, 10, 100]
    # A replay over the same Stream skips it the same way.
    replayed = list(sse.stream(url, headers={"Last-Event-ID": live[0].id or ""}))
    assert [event.json["progress"] for event in replayed] == [10, 100]


def test_ping_when_a_storm_opens_streams_together_then_their_periods_differ() -> None:
    periods = [jittered_ping(15.0) for _ in range(2000)]
    assert 11.25 <= min(periods) < 11.6 and 18.4 < max(periods) <= 18.75
    assert len({round(period, 3) for period in periods}) > 1500
