"""DELETE's two scripts (core/job_delete.lua through AsyncJobStore.claim_delete/remove), against
a real Redis: the claim counts the live holders of a stored object; the removal leaves no key of
the job, keeps what belongs to other jobs, and sends the `deleted` event."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
import redis
import redis.asyncio as aioredis

from yousync.core import keys
from yousync.core.config import Settings
from yousync.core.jobs import AsyncJobStore, JobStore, Refused
from yousync.core.record import JobRecord

T = TypeVar("T")
TOKEN = "tok"


@pytest.fixture
def run(redis_client: redis.Redis, redis_url: str) -> Iterator[Callable[..., Any]]:
    """Runs `fn(store)` with a fresh AsyncJobStore on its own loop; returns its result."""

    def call(fn: Callable[[AsyncJobStore], Awaitable[T]]) -> T:
        async def go() -> T:
            client = aioredis.Redis.from_url(redis_url)
            try:
                return await fn(AsyncJobStore(client, Settings(redis_url=redis_url)))
            finally:
                await client.aclose()

        return asyncio.run(go())

    yield call


@pytest.fixture
def sync(redis_url: str) -> JobStore:
    return JobStore(redis.Redis.from_url(redis_url), Settings(redis_url=redis_url))


def completed(run: Callable[..., Any], sync: JobStore, job_id: str, **markers: Any) -> None:
    run(lambda s: s.create(job_id, TOKEN, sha256="sum", **markers))
    sync.update(job_id, TOKEN, status="completed", progress=100, stage="done", s3_url="s3://b/k")


def deduplicated(run: Callable[..., Any], job_id: str, original: str) -> str:
    """Created as submission.py does: completed at once, joining the original's holders."""
    return run(  # type: ignore[no-any-return]
        lambda s: s.create(
            job_id,
            TOKEN,
            status="completed",
            progress=100,
            stage="done",
            s3_url="s3://b/k",
            sha256="sum",
            deduplicated=True,
            deduplicated_from=original,
        )
    )


def record(run: Callable[..., Any], job_id: str) -> JobRecord:
    found = run(lambda s: s.get(job_id))
    assert found is not None
    return found  # type: ignore[no-any-return]


def keys_naming(client: redis.Redis, job_id: str) -> list[str]:
    return sorted(key for key in client.scan_iter(match=f"*{job_id}*"))


def test_remove_when_job_has_events_dedupe_and_callbacks_then_nothing_of_it_is_left(
    run: Callable[..., Any], sync: JobStore, redis_client: redis.Redis
) -> None:
    completed(run, sync, "job-a")
    completed(run, sync, "job-b")  # the token's other job: its entries stay
    redis_client.set(keys.dedupe(TOKEN, "sum"), "job-a")
    for delivery, due in (("d1", keys.CALLBACKS_DUE), ("d2", keys.CALLBACKS_DEAD)):
        redis_client.sadd(keys.job_callbacks("job-a"), delivery)
        redis_client.zadd(due, {delivery: 1})
        redis_client.hset(keys.callback(delivery), mapping={"job_id": "job-a", "body": "{}"})
    redis_client.zadd(keys.CALLBACKS_DEAD, {"other-delivery": 1})
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.EVENTS_CHANNEL)
    pubsub.get_message(timeout=1)

    job = record(run, "job-a")
    assert run(lambda s: s.claim_delete(job)) == 0
    event_id = run(lambda s: s.remove(job))

    assert keys_naming(redis_client, "job-a") == []
    assert not redis_client.exists(keys.dedupe(TOKEN, "sum"))
    assert not redis_client.exists(keys.callback("d1"), keys.callback("d2"))
    assert redis_client.zrange(keys.CALLBACKS_DUE, 0, -1) == []
    assert redis_client.zrange(keys.CALLBACKS_DEAD, 0, -1) == ["other-delivery"]
    assert redis_client.zrange(keys.token_jobs(TOKEN), 0, -1) == ["job-b"]
    # The token Stream keeps the other job's events and one tombstone of this one.
    token_events = [fields for _, fields in redis_client.xrange(keys.token_events(TOKEN))]
    mine = [fields for fields in token_events if fields["job_id"] == "job-a"]
    assert [fields["status"] for fields in mine] == ["deleted"]
    assert "result" not in mine[0] and "s3_url" not in mine[0]
    assert any(fields["job_id"] == "job-b" for fields in token_events)
    note = json.loads(pubsub.get_message(timeout=2)["data"])  # type: ignore[index]
    pubsub.close()
    assert note["id"] == event_id and note["snapshot"]["status"] == "deleted"
    assert note["snapshot"]["progress"] == "100"

    # A second DELETE that claimed before the first removed: nothing left to send or remove.
    assert run(lambda s: s.remove(job)) == ""
    assert keys_naming(redis_client, "job-a") == []
    token_events = [fields for _, fields in redis_client.xrange(keys.token_events(TOKEN))]
    assert [f["status"] for f in token_events if f["job_id"] == "job-a"] == ["deleted"]
    with pytest.raises(Refused):
        run(lambda s: s.claim_delete(job))


def test_remove_when_dedupe_entry_names_another_job_then_it_stays(
    run: Callable[..., Any], sync: JobStore, redis_client: redis.Redis
) -> None:
    completed(run, sync, "job-a")
    redis_client.set(keys.dedupe(TOKEN, "sum"), "job-other")
    job = record(run, "job-a")
    run(lambda s: s.remove(job))
    assert redis_client.get(keys.dedupe(TOKEN, "sum")) == "job-other"


def test_claim_when_deduplicated_jobs_share_the_object_then_the_last_live_holder_counts_0(
    run: Callable[..., Any], sync: JobStore, redis_client: redis.Redis
) -> None:
    completed(run, sync, "root")
    for dedup in ("dup-1", "dup-2"):
        deduplicated(run, dedup, "root")
    assert 0 < redis_client.ttl(keys.job_dedups("root")) <= Settings().job_ttl_seconds

    # The root while two deduplicated jobs live: they hold the object.
    root = record(run, "root")
    assert run(lambda s: s.claim_delete(root)) == 2
    # Being deleted, the root takes no new deduplicated job.
    with pytest.raises(Refused) as refused:
        deduplicated(run, "dup-3", "root")
    assert refused.value.reason == "original_gone"
    assert not redis_client.exists(keys.job("dup-3"))
    run(lambda s: s.remove(root))
    assert redis_client.smembers(keys.job_dedups("root")) == {"dup-1", "dup-2"}

    first = record(run, "dup-1")
    assert run(lambda s: s.claim_delete(first)) == 1  # dup-2 still holds it
    run(lambda s: s.remove(first))
    second = record(run, "dup-2")
    assert run(lambda s: s.claim_delete(second)) == 0  # the last holder: the object goes
    run(lambda s: s.remove(second))
    assert keys_naming(redis_client, "root") == []
    assert keys_naming(redis_client, "dup-") == []


def test_claim_when_the_root_lives_then_a_deduplicated_job_keeps_its_object(
    run: Callable[..., Any], sync: JobStore, redis_client: redis.Redis
) -> None:
    completed(run, sync, "root")
    deduplicated(run, "dup", "root")
    dup = record(run, "dup")
    assert run(lambda s: s.claim_delete(dup)) == 1
    run(lambda s: s.remove(dup))
    assert redis_client.exists(keys.job("root"))
    # The root's set no longer names it, and went with its last member.
    assert not redis_client.exists(keys.job_dedups("root"))
    root = record(run, "root")
    assert run(lambda s: s.claim_delete(root)) == 0


def test_create_deduplicated_when_original_not_completed_or_gone_then_refused_and_nothing_made(
    run: Callable[..., Any], redis_client: redis.Redis
) -> None:
    run(lambda s: s.create("root", TOKEN))
    for original in ("root", "gone"):
        with pytest.raises(Refused) as refused:
            deduplicated(run, "dup", original)
        assert refused.value.reason == "original_gone"
    assert not redis_client.exists(keys.job("dup"), keys.job_events("dup"))
    assert not redis_client.exists(keys.job_dedups("root"), keys.job_dedups("gone"))


def test_claim_when_a_deduplicated_job_was_created_before_it_then_it_is_counted(
    run: Callable[..., Any], sync: JobStore, redis_client: redis.Redis
) -> None:
    """The other order of the race: the deduplicated job exists (one script with its joining
    the dedups set), so the original's DELETE keeps the object."""
    completed(run, sync, "root")
    deduplicated(run, "dup", "root")
    root = record(run, "root")
    assert run(lambda s: s.claim_delete(root)) == 1


def test_claim_when_made_then_every_write_and_marker_is_refused_as_missing(
    run: Callable[..., Any], sync: JobStore, redis_client: redis.Redis
) -> None:
    run(lambda s: s.create("job-a", TOKEN))
    sync.update("job-a", TOKEN, status="processing", progress=20, stage="uploading")
    job = record(run, "job-a")
    run(lambda s: s.claim_delete(job))
    events = redis_client.xlen(keys.job_events("job-a"))

    with pytest.raises(Refused) as refused:
        sync.update("job-a", TOKEN, status="failed", error={"code": "x", "message": "x"})
    assert refused.value.reason == "missing"
    assert not sync.set_markers("job-a", s3_key="audio/tok/job-a.flac")
    assert redis_client.xlen(keys.job_events("job-a")) == events
    assert redis_client.hget(keys.job("job-a"), "status") == "processing"


def test_remove_when_the_record_expired_after_the_claim_then_its_side_keys_still_go(
    run: Callable[..., Any], sync: JobStore, redis_client: redis.Redis
) -> None:
    """The record's TTL ran out between claim and removal (S3 already cleared): the DELETE
    still succeeds and leaves none of the keys that outlive the record."""
    completed(run, sync, "root")
    deduplicated(run, "dup", "root")
    redis_client.set(keys.dedupe(TOKEN, "sum"), "dup")
    redis_client.sadd(keys.job_callbacks("dup"), "dup.1")
    redis_client.zadd(keys.CALLBACKS_DEAD, {"dup.1": 1})
    redis_client.hset(keys.callback("dup.1"), mapping={"job_id": "dup", "body": "{}"})
    dup = record(run, "dup")
    assert run(lambda s: s.claim_delete(dup)) == 1
    redis_client.delete(keys.job("dup"), keys.job_events("dup"))  # expired

    run(lambda s: s.remove(dup))

    assert keys_naming(redis_client, "dup") == []
    assert not redis_client.exists(keys.dedupe(TOKEN, "sum"))
    assert redis_client.zrange(keys.CALLBACKS_DEAD, 0, -1) == []
    assert not redis_client.exists(keys.job_dedups("root"))
    assert "dup" not in redis_client.zrange(keys.token_jobs(TOKEN), 0, -1)
