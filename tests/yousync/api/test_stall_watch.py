"""Stall marks and ETAs on real jobs: a worker frozen mid-job gets its job marked `stalled`,
cleared by the next real progress; a job of a known size carries an ETA."""

from __future__ import annotations

import asyncio
import signal
import threading

import httpx
import redis
import redis.asyncio as aioredis

from devtools import stack
from tests.helpers import sse
from tests.helpers.audio import wav_bytes
from tests.helpers.jobs import create_job
from tests.helpers.wait import wait_until
from tests.helpers.worker_log import task_ended
from yousync.api.stall_watch import mark_stalled_once
from yousync.core import keys
from yousync.core.config import Settings
from yousync.core.jobs import AsyncJobStore


def upload(base: str, token_id: str, seconds: float, freq: float = 440.0) -> dict[str, str]:
    response = httpx.post(
        f"{base}/tokens/{token_id}/upload-audio",
        files={"file": ("a.wav", wav_bytes(seconds, freq=freq), "audio/wav")},
    )
    assert response.status_code == 202
    return dict(response.json())


def test_stall_when_worker_freezes_mid_job_then_marked_and_cleared_by_next_progress(
    pipeline: str, token_id: str, worker_service: stack.Proc
) -> None:
    body = upload(pipeline, token_id, 2.0)
    events = []
    frozen = False
    for event in sse.stream(f"{pipeline}{body['progress_url']}", timeout=60):
        snapshot = event.json
        events.append(snapshot)
        if snapshot["stage"] == "analyzing" and not frozen:
            frozen = True
            worker_service.signal_group(signal.SIGSTOP)  # STALL_SECONDS=2 in the test stack
            threading.Timer(4.0, worker_service.signal_group, args=(signal.SIGCONT,)).start()
    stalled = [i for i, snap in enumerate(events) if snap["stalled"]]
    assert stalled, "a stalled event was written while the worker was frozen"
    first = stalled[0]
    assert events[first]["stage"] == "analyzing"
    assert events[first]["progress"] == events[first - 1]["progress"], (
        "stage and progress unchanged"
    )
    assert not events[first + 1]["stalled"], "the next real progress clears the mark"
    assert events[-1]["status"] == "completed" and not events[-1]["stalled"]


def test_eta_when_similar_jobs_ran_before_then_running_events_carry_eta(
    pipeline: str, token_id: str, worker_service: stack.Proc
) -> None:
    first = upload(pipeline, token_id, 1.0)
    assert httpx.get(f"{pipeline}{first['result_url']}?wait=30", timeout=40).json()["status"] == (
        "completed"
    )
    # The worker records the first job's stage times once it has written `completed`.
    wait_until(
        lambda: task_ended(worker_service, first["task_id"]),
        timeout=10,
        what="the worker done with the first job",
    )
    second = upload(pipeline, token_id, 1.0, freq=445.0)  # same size, not a duplicate
    events = [event.json for event in sse.stream(f"{pipeline}{second['progress_url']}")]
    running = [snap for snap in events if snap["status"] == "processing"]
    etas = [snap["eta_seconds"] for snap in running if snap["eta_seconds"] is not None]
    assert etas, "history of the first job gives the second one an ETA"
    assert all(eta >= 0 for eta in etas)
    assert events[-1]["eta_seconds"] is None  # finished: nothing left to estimate


def test_mark_stalled_once_when_a_record_is_unreadable_then_other_jobs_still_marked(
    redis_url: str, redis_client: redis.Redis, token_id: str
) -> None:
    good = create_job(redis_url, token_id)
    bad = create_job(redis_url, token_id)
    # A newer release's worker during a rolling deploy: a stage this process does not know.
    redis_client.hset(keys.job(bad), "stage", "rehearsing")
    redis_client.zadd(keys.ACTIVE_JOBS, {good: 0, bad: 0})  # silent since 1970
    for job_id in (good, bad):
        redis_client.hset(keys.job(job_id), "status", "processing")

    async def one_round() -> list[str]:
        client = aioredis.Redis.from_url(redis_url)
        try:
            store = AsyncJobStore(client, Settings(redis_url=redis_url))
            return await mark_stalled_once(client, store, stall_seconds=30)
        finally:
            await client.aclose()

    assert asyncio.run(one_round()) == [good]
    assert redis_client.hget(keys.job(good), "stalled") == "1"
