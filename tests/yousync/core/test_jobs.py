"""The job store's atomic rules, against a real Redis: one write = hash + Stream entry +
notification; no progress decrease; nothing after a terminal state."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from yousync.core import keys
from yousync.core.config import Settings
from yousync.core.jobs import AsyncJobStore, JobStore, Refused
from yousync.core.models import JobSnapshot, JobStatus


@pytest.fixture
def store(redis_client: redis.Redis, redis_url: str) -> JobStore:
    settings = Settings(redis_url=redis_url, job_ttl_seconds=100, active_job_ttl_seconds=1000)
    return JobStore(redis.Redis.from_url(redis_url), settings)


@pytest.fixture
def job(redis_client: redis.Redis, redis_url: str) -> str:
    """A job created the way the API creates it (the Lua `create` mode)."""
    job_id = "11111111-1111-4111-8111-111111111111"

    async def create() -> None:
        client = aioredis.Redis.from_url(redis_url)
        await AsyncJobStore(client, Settings()).create(job_id, "tok", spool_path="/x")
        await client.aclose()

    asyncio.run(create())
    return job_id


@pytest.fixture
def notifications(redis_client: redis.Redis) -> Iterator[redis.client.PubSub]:
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.EVENTS_CHANNEL)
    pubsub.get_message(timeout=1)
    yield pubsub
    pubsub.close()


def test_update_when_accepted_then_hash_stream_and_notification_agree(
    store: JobStore, job: str, redis_client: redis.Redis, notifications: redis.client.PubSub
) -> None:
    event_id = store.update(
        job, "tok", status="processing", progress=7, stage="preparing", message="m"
    )
    fields = redis_client.hgetall(keys.job(job))
    assert fields["progress"] == "7" and fields["last_event_id"] == event_id
    assert fields["spool_path"] == "/x"  # internal markers stay in the hash …
    entries = redis_client.xrange(keys.job_events(job))
    assert [entry_id for entry_id, _ in entries][-1] == event_id
    assert "spool_path" not in entries[-1][1]  # … and never reach an event
    note = notifications.get_message(timeout=2)
    assert note is not None
    payload = json.loads(note["data"])
    assert payload["id"] == event_id and payload["job_id"] == job and payload["token_id"] == "tok"
    assert JobSnapshot.from_fields(payload["snapshot"]).progress == 7


def test_update_when_progress_decreases_then_refused_and_nothing_written(
    store: JobStore, job: str, redis_client: redis.Redis
) -> None:
    store.update(job, "tok", status="processing", progress=30)
    before = redis_client.xlen(keys.job_events(job))
    with pytest.raises(Refused) as refused:
        store.update(job, "tok", progress=20)
    assert refused.value.reason == "progress_decrease"
    assert redis_client.hget(keys.job(job), "progress") == "30"
    assert redis_client.xlen(keys.job_events(job)) == before


@pytest.mark.parametrize("terminal", ["completed", "failed", "cancelled"])
def test_update_when_job_is_terminal_then_refused(
    store: JobStore, job: str, redis_client: redis.Redis, terminal: str
) -> None:
    store.update(job, "tok", status=terminal, progress=100 if terminal == "completed" else 0)
    with pytest.raises(Refused) as refused:
        store.update(job, "tok", status="processing", progress=100)
    assert refused.value.reason == "terminal"
    assert redis_client.hget(keys.job(job), "status") == terminal


def test_update_when_job_missing_then_refused_and_no_key_created(
    store: JobStore, redis_client: redis.Redis
) -> None:
    with pytest.raises(Refused) as refused:
        store.update("nope", "tok", progress=1)
    assert refused.value.reason == "missing"
    assert redis_client.keys("yousync:*") == []


def test_ttl_when_terminal_then_shortened_to_job_ttl(
    store: JobStore, job: str, redis_client: redis.Redis
) -> None:
    store.update(job, "tok", status="processing", progress=5)
    assert redis_client.ttl(keys.job(job)) > 100
    store.update(job, "tok", status="completed", progress=100)
    assert 0 < redis_client.ttl(keys.job(job)) <= 100
    assert 0 < redis_client.ttl(keys.job_events(job)) <= 100


def test_reopen_when_failed_then_allowed_and_when_completed_then_refused(
    store: JobStore, job: str
) -> None:
    store.update(job, "tok", status="failed")
    store.reopen(job, "tok", status="queued")
    store.update(job, "tok", status="completed", progress=100)
    with pytest.raises(Refused):
        store.reopen(job, "tok", status="queued")


def test_set_markers_when_job_missing_then_nothing_created(
    store: JobStore, redis_client: redis.Redis
) -> None:
    assert store.set_markers("nope", s3_key="k") is False
    assert redis_client.keys("yousync:*") == []


def test_get_when_no_hash_then_none(store: JobStore, redis_client: redis.Redis) -> None:
    assert store.get("nope") is None


def test_get_when_job_has_markers_then_record_carries_them_typed(store: JobStore, job: str) -> None:
    store.update(job, "tok", status="processing", progress=12, stage="preparing")
    store.set_markers(job, s3_key="audio/tok/x.flac", upload_started=1, size_bytes=10)
    record = store.get(job)
    assert record is not None
    assert record.job_id == job and record.token_id == "tok"
    assert record.status == JobStatus.PROCESSING and record.snapshot.progress == 12
    assert record.spool_path == Path("/x")  # written by the API's create
    assert record.s3_key == "audio/tok/x.flac" and record.upload_started is True
    assert record.size_bytes == 10
    assert record.last_event_id is not None


def test_async_get_when_no_hash_then_none(redis_client: redis.Redis, redis_url: str) -> None:
    async def get() -> object:
        client = aioredis.Redis.from_url(redis_url)
        try:
            return await AsyncJobStore(client, Settings()).get("nope")
        finally:
            await client.aclose()

    assert asyncio.run(get()) is None


# --- retention (RESULT_RETENTION_SECONDS, DEDUPE_WINDOW_SECONDS) ------------------------------

THREE_DAYS = 259200


def finish(store: JobStore, job_id: str, **values: object) -> None:
    store.update(job_id, "tok", status="completed", progress=100, stage="done", **values)


def test_ttl_when_result_retention_is_days_then_hash_and_stream_live_that_long(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, redis_client: redis.Redis, job: str
) -> None:
    monkeypatch.setenv("RESULT_RETENTION_SECONDS", str(THREE_DAYS))
    settings = Settings(redis_url=redis_url)
    assert settings.job_ttl_seconds == THREE_DAYS
    finish(JobStore(redis.Redis.from_url(redis_url), settings), job)
    for key in (keys.job(job), keys.job_events(job)):
        assert THREE_DAYS - 5 <= redis_client.ttl(key) <= THREE_DAYS


def test_remember_result_when_window_outlives_the_record_then_entry_expires_with_it(
    redis_url: str, redis_client: redis.Redis, job: str
) -> None:
    settings = Settings(redis_url=redis_url, job_ttl_seconds=3600, dedupe_window_seconds=7200)
    store = JobStore(redis.Redis.from_url(redis_url), settings)
    finish(store, job)
    assert store.remember_result("tok", "abc", job)
    entry_ttl = redis_client.ttl(keys.dedupe("tok", "abc"))
    assert 0 < entry_ttl <= 3600 and entry_ttl <= redis_client.ttl(keys.job(job))


def test_remember_result_when_window_shorter_then_entry_lives_the_window(
    redis_url: str, redis_client: redis.Redis, job: str
) -> None:
    settings = Settings(redis_url=redis_url, job_ttl_seconds=THREE_DAYS, dedupe_window_seconds=60)
    store = JobStore(redis.Redis.from_url(redis_url), settings)
    finish(store, job)
    assert store.remember_result("tok", "abc", job)
    assert 0 < redis_client.ttl(keys.dedupe("tok", "abc")) <= 60


def test_remember_result_when_window_0_or_job_deleted_then_nothing_remembered(
    redis_url: str, redis_client: redis.Redis, job: str
) -> None:
    off = Settings(redis_url=redis_url, dedupe_window_seconds=0)
    assert not JobStore(redis.Redis.from_url(redis_url), off).remember_result("tok", "a", job)
    store = JobStore(redis.Redis.from_url(redis_url), Settings(redis_url=redis_url))
    redis_client.hset(keys.job(job), "deleting", "1")
    assert not store.remember_result("tok", "a", job)
    redis_client.delete(keys.job(job))
    assert not store.remember_result("tok", "a", job)
    assert not redis_client.exists(keys.dedupe("tok", "a"))
