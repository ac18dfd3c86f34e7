"""Completion callbacks in Redis, against a real Redis: a job end queues one delivery in the
same write; claims lease; outcomes, backoff, dead letters and replay."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
import redis
import redis.asyncio as aioredis

from devtools.stack import poll
from yousync.core import keys
from yousync.core.callbacks import Claim, Delivery, DeliveryStore, next_due, retry_delay
from yousync.core.config import Settings
from yousync.core.jobs import AsyncJobStore, JobStore, Refused
from yousync.core.models import JobSnapshot

RECEIVER = "http://receiver.example/hook"
JOB = "22222222-2222-4222-8222-222222222222"


def settings_for(redis_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "redis_url": redis_url,
        "job_ttl_seconds": 100,
        "callback_url": RECEIVER,
        "callback_retry_base_seconds": 5,
        "callback_retry_max_seconds": 3600,
        "callback_give_up_seconds": 86400,
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


def create(redis_url: str, settings: Settings, job_id: str = JOB, **markers: object) -> None:
    async def run() -> None:
        client = aioredis.Redis.from_url(redis_url)
        await AsyncJobStore(client, settings).create(job_id, "tok", **markers)
        await client.aclose()

    asyncio.run(run())


def end_job(store: JobStore, job_id: str = JOB, status: str = "completed") -> str:
    return store.update(job_id, "tok", status=status, progress=100, stage="done", message="m")


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return settings_for(redis_url)


@pytest.fixture
def store(redis_client: redis.Redis, settings: Settings, redis_url: str) -> JobStore:
    return JobStore(redis.Redis.from_url(redis_url, decode_responses=True), settings)


@pytest.fixture
def deliveries(redis_client: redis.Redis, settings: Settings) -> DeliveryStore:
    return DeliveryStore(redis_client, settings, lease_seconds=60)


def test_job_end_when_operator_url_set_then_one_delivery_queued_in_the_same_event(
    store: JobStore, settings: Settings, redis_client: redis.Redis, redis_url: str, ended: str
) -> None:
    delivery_id = f"{JOB}.1"
    assert redis_client.zscore(keys.CALLBACKS_DUE, delivery_id) is not None
    assert redis_client.smembers(keys.job_callbacks(JOB)) == {delivery_id}
    record = redis_client.hgetall(keys.callback(delivery_id))
    assert record["url"] == RECEIVER and record["operator"] == "1" and record["attempts"] == "0"
    assert redis_client.ttl(keys.callback(delivery_id)) > 0
    body = JobSnapshot.from_fields(json.loads(record["snapshot"]))
    assert body.status == "completed" and body.job_id == JOB
    # The end's own event already says `pending`.
    _, fields = redis_client.xrevrange(keys.job_events(JOB), count=1)[0]
    assert json.loads(fields["callback"]) == {"status": "pending", "attempts": 0}
    assert body.callback is not None and body.callback.status == "pending"


def test_job_end_when_upload_named_a_target_then_it_wins_over_the_operator_url(
    store: JobStore, settings: Settings, redis_client: redis.Redis, redis_url: str
) -> None:
    create(redis_url, settings, callback_url="https://own.example/cb")
    end_job(store, status="failed")
    record = redis_client.hgetall(keys.callback(f"{JOB}.1"))
    assert record["url"] == "https://own.example/cb" and record["operator"] == "0"


def test_job_end_when_no_target_then_nothing_queued_and_no_callback_field(
    redis_client: redis.Redis, redis_url: str
) -> None:
    settings = settings_for(redis_url, callback_url="")
    store = JobStore(redis.Redis.from_url(redis_url), settings)
    create(redis_url, settings)
    end_job(store)
    assert redis_client.zcard(keys.CALLBACKS_DUE) == 0
    assert not redis_client.hget(keys.job(JOB), "callback")


def test_writes_after_the_end_when_refused_then_no_second_delivery_and_a_rerun_gets_its_own(
    store: JobStore, settings: Settings, redis_client: redis.Redis, redis_url: str
) -> None:
    create(redis_url, settings)
    end_job(store, status="failed")
    with pytest.raises(Refused):
        end_job(store, status="completed")
    assert redis_client.zcard(keys.CALLBACKS_DUE) == 1
    store.reopen(JOB, "tok", status="queued", stage="queued", message="again")
    end_job(store)
    assert redis_client.smembers(keys.job_callbacks(JOB)) == {f"{JOB}.1", f"{JOB}.2"}
    assert redis_client.hget(keys.job(JOB), "callback_delivery") == f"{JOB}.2"


def test_create_when_already_completed_then_the_deduplicated_end_is_queued(
    settings: Settings, redis_client: redis.Redis, redis_url: str
) -> None:
    create(redis_url, settings, status="completed", progress=100, stage="done")
    assert redis_client.zscore(keys.CALLBACKS_DUE, f"{JOB}.1") is not None


def test_claim_when_two_drains_then_each_due_delivery_goes_to_one_until_its_lease_ends(
    store: JobStore, settings: Settings, redis_client: redis.Redis, redis_url: str, ended: str
) -> None:
    short = DeliveryStore(redis_client, settings, lease_seconds=0.3)
    first = short.claim(10)
    assert [d.id for d in first.deliveries] == [f"{JOB}.1"]
    assert short.claim(10).deliveries == []  # leased: the other drain sees nothing
    # Its drain died without an outcome: due again once the lease ran out, same id.
    again = poll(lambda: short.claim(10).deliveries, timeout=10, what="lease expiry")
    assert [d.id for d in again] == [f"{JOB}.1"]


def test_claim_when_the_record_is_gone_then_the_due_id_is_dropped(
    deliveries: DeliveryStore, redis_client: redis.Redis
) -> None:
    redis_client.zadd(keys.CALLBACKS_DUE, {"gone.1": 0})
    assert deliveries.claim(10).deliveries == []
    assert redis_client.zcard(keys.CALLBACKS_DUE) == 0


@pytest.fixture
def ended(redis_url: str, settings: Settings, store: JobStore) -> str:
    """JOB, created and ended: its delivery `JOB.1` is due."""
    create(redis_url, settings)
    end_job(store)
    return JOB


def _claimed(deliveries: DeliveryStore) -> tuple[Delivery, float]:
    claim = deliveries.claim(10)
    assert len(claim.deliveries) == 1
    return claim.deliveries[0], claim.now


def test_failed_attempt_when_before_give_up_then_rescheduled_with_backoff(
    store: JobStore,
    settings: Settings,
    deliveries: DeliveryStore,
    redis_client: redis.Redis,
    redis_url: str,
    ended: str,
) -> None:
    delivery, now = _claimed(deliveries)
    due = deliveries.failed(delivery, "HTTP 503", now=now)
    assert due is not None and now + 4 <= due <= now + 6
    assert redis_client.zscore(keys.CALLBACKS_DUE, delivery.id) == pytest.approx(due)
    record = redis_client.hgetall(keys.callback(delivery.id))
    assert record["attempts"] == "1" and record["last_error"] == "HTTP 503"
    state = json.loads(redis_client.hget(keys.job(JOB), "callback") or "")
    assert state == {"status": "pending", "attempts": 1}
    # An outcome for an attempt already counted (a drain whose lease ran out) is ignored.
    deliveries.failed(delivery, "late", now=now)
    assert redis_client.hget(keys.callback(delivery.id), "attempts") == "1"


def test_failed_attempt_when_past_give_up_then_dead_letter_kept_and_replay_makes_it_due(
    store: JobStore, redis_client: redis.Redis, redis_url: str
) -> None:
    settings = settings_for(redis_url, callback_give_up_seconds=0.001)
    store = JobStore(redis.Redis.from_url(redis_url), settings)
    deliveries = DeliveryStore(redis_client, settings)
    create(redis_url, settings)
    end_job(store)
    delivery, now = _claimed(deliveries)
    assert deliveries.failed(delivery, "ConnectError", now=now + 1) is None
    assert redis_client.zcard(keys.CALLBACKS_DUE) == 0
    assert deliveries.dead_letters() == [delivery.id]
    assert redis_client.ttl(keys.callback(delivery.id)) == -1  # never expires
    assert redis_client.hget(keys.callback(delivery.id), "snapshot")  # the body is kept
    assert json.loads(redis_client.hget(keys.job(JOB), "callback") or "") == {
        "status": "failed",
        "attempts": 1,
    }
    assert redis_client.hget(keys.METRICS_CALLBACKS, "dead_lettered") == "1"
    # The job keeps its record (and events) while its end was never heard of.
    assert redis_client.ttl(keys.job(JOB)) == -1
    assert redis_client.ttl(keys.job_events(JOB)) == -1

    assert deliveries.replay([delivery.id, "unknown.1"]) == [delivery.id]
    assert deliveries.dead_letters() == []
    assert redis_client.hget(keys.callback(delivery.id), "attempts") == "0"
    assert redis_client.ttl(keys.callback(delivery.id)) > 0
    again, _ = _claimed(deliveries)
    assert again.id == delivery.id and again.attempts == 0
    deliveries.delivered(again)  # delivered at last: the record's retention comes back
    assert 0 < redis_client.ttl(keys.job(JOB)) <= settings.job_ttl_seconds
    assert 0 < redis_client.ttl(keys.job_events(JOB)) <= settings.job_ttl_seconds


def test_delivered_when_2xx_then_removed_from_due_and_snapshot_says_delivered(
    store: JobStore,
    settings: Settings,
    deliveries: DeliveryStore,
    redis_client: redis.Redis,
    redis_url: str,
    ended: str,
) -> None:
    delivery, now = _claimed(deliveries)
    deliveries.failed(delivery, "HTTP 500", now=now)
    redis_client.zadd(keys.CALLBACKS_DUE, {delivery.id: 0})  # due at once
    delivery, _ = _claimed(deliveries)
    assert deliveries.delivered(delivery) == 2
    assert redis_client.zcard(keys.CALLBACKS_DUE) == 0
    assert json.loads(redis_client.hget(keys.job(JOB), "callback") or "") == {
        "status": "delivered",
        "attempts": 2,
    }
    assert redis_client.hget(keys.METRICS_CALLBACKS, "delivered") == "1"


def test_outcome_when_the_job_record_expired_then_the_delivery_still_completes(
    store: JobStore,
    settings: Settings,
    deliveries: DeliveryStore,
    redis_client: redis.Redis,
    redis_url: str,
    ended: str,
) -> None:
    redis_client.delete(keys.job(JOB))
    delivery, _ = _claimed(deliveries)
    assert delivery.body().startswith(b"{")
    assert deliveries.delivered(delivery) == 1
    assert not redis_client.exists(keys.job(JOB))  # no stray hash made by the outcome


@pytest.mark.parametrize(
    ("attempts", "expected"),
    [(1, 5.0), (2, 20.0), (3, 80.0), (4, 320.0), (6, 3600.0), (99, 3600.0)],
)
def test_retry_delay_when_attempts_grow_then_times_four_up_to_the_cap(
    attempts: int, expected: float
) -> None:
    settings = Settings(callback_retry_base_seconds=5, callback_retry_max_seconds=3600)
    assert retry_delay(attempts, settings, jitter=1.0) == expected
    assert expected * 0.8 - 1e-9 <= min(retry_delay(attempts, settings), 3600) <= expected * 1.2


def test_next_due_when_the_give_up_time_is_near_then_the_last_attempt_is_made_at_it() -> None:
    settings = Settings(callback_retry_base_seconds=5, callback_give_up_seconds=100)
    assert next_due(3, now=90.0, since=0.0, settings=settings) == 100.0
    assert next_due(4, now=100.0, since=0.0, settings=settings) is None


def test_job_end_when_an_earlier_end_was_dead_lettered_then_the_job_stays_persistent(
    redis_client: redis.Redis, redis_url: str
) -> None:
    """The set of a job's deliveries (what deleting a job walks) and the job's record must
    not expire while the set names a dead letter, which never does."""
    settings = settings_for(redis_url, callback_give_up_seconds=0.001)
    store = JobStore(redis.Redis.from_url(redis_url), settings)
    deliveries = DeliveryStore(redis_client, settings)
    create(redis_url, settings)
    end_job(store, status="failed")
    delivery, now = _claimed(deliveries)
    deliveries.failed(delivery, "ConnectError", now=now + 1)
    store.reopen(JOB, "tok", status="queued", stage="queued", message="again")
    end_job(store)
    assert redis_client.smembers(keys.job_callbacks(JOB)) == {f"{JOB}.1", f"{JOB}.2"}
    assert redis_client.ttl(keys.job_callbacks(JOB)) == -1
    # The rerun's end does not give the job's record and events an expiry either.
    assert redis_client.ttl(keys.job(JOB)) == -1
    assert redis_client.ttl(keys.job_events(JOB)) == -1


def test_delivered_when_it_comes_after_the_lease_ran_out_and_another_drain_failed_then_delivered(
    store: JobStore,
    settings: Settings,
    redis_client: redis.Redis,
    redis_url: str,
    ended: str,
) -> None:
    """Drain A claims, its lease runs out, drain B claims and fails (rescheduled), then A's
    receiver answers 2xx: the receiver has it, so it is delivered, once."""
    short = DeliveryStore(redis_client, settings, lease_seconds=0.3)
    first, _ = _claimed(short)

    def claimed_again() -> Claim | None:
        claim = short.claim(10)
        return claim if claim.deliveries else None

    claim_b = poll(claimed_again, timeout=10, what="lease expiry")
    [second] = claim_b.deliveries
    assert short.failed(second, "HTTP 503", now=claim_b.now) is not None
    assert redis_client.zscore(keys.CALLBACKS_DUE, first.id) is not None  # B rescheduled it

    assert short.delivered(first) == 2  # B's failed attempt and A's
    record = redis_client.hgetall(keys.callback(first.id))
    assert record["status"] == "delivered" and record["attempts"] == "2"
    assert redis_client.zscore(keys.CALLBACKS_DUE, first.id) is None
    assert redis_client.zscore(keys.CALLBACKS_DEAD, first.id) is None
    assert json.loads(redis_client.hget(keys.job(JOB), "callback") or "") == {
        "status": "delivered",
        "attempts": 2,
    }
    # Late outcomes of the same delivery change nothing, and nothing is counted twice.
    assert short.delivered(second) == 0
    short.failed(second, "late", now=claim_b.now)
    assert redis_client.hget(keys.callback(first.id), "status") == "delivered"
    assert redis_client.zcard(keys.CALLBACKS_DUE) == 0
    assert redis_client.hget(keys.METRICS_CALLBACKS, "delivered") == "1"


def test_delivered_when_another_dead_letter_of_the_job_still_waits_then_the_job_keeps_no_expiry(
    redis_client: redis.Redis, redis_url: str
) -> None:
    """The job's record, events and set of deliveries get their expiry back only when none of
    its deliveries is a dead letter any more: a DELETE reaches a dead letter through the set."""
    settings = settings_for(redis_url, callback_give_up_seconds=0.001)
    store = JobStore(redis.Redis.from_url(redis_url), settings)
    deliveries = DeliveryStore(redis_client, settings)
    create(redis_url, settings)
    end_job(store, status="failed")
    first, now = _claimed(deliveries)
    deliveries.failed(first, "ConnectError", now=now + 1)
    store.reopen(JOB, "tok", status="queued", stage="queued", message="again")
    end_job(store, status="failed")
    second, now = _claimed(deliveries)
    deliveries.failed(second, "ConnectError", now=now + 1)
    assert deliveries.dead_letters() == [first.id, second.id]
    job_keys = [keys.job(JOB), keys.job_events(JOB), keys.job_callbacks(JOB)]

    assert deliveries.replay([first.id]) == [first.id]
    assert [redis_client.ttl(key) for key in job_keys] == [-1, -1, -1]
    again, _ = _claimed(deliveries)
    assert deliveries.delivered(again) == 1
    assert [redis_client.ttl(key) for key in job_keys] == [-1, -1, -1]  # the second waits

    assert deliveries.replay([second.id]) == [second.id]
    again, _ = _claimed(deliveries)
    assert deliveries.delivered(again) == 1
    assert all(redis_client.ttl(key) > 0 for key in job_keys)


def test_delivered_when_2xx_then_the_body_goes_and_the_record_expires_with_the_job(
    store: JobStore,
    settings: Settings,
    deliveries: DeliveryStore,
    redis_client: redis.Redis,
    redis_url: str,
    ended: str,
) -> None:
    """The body holds the job's result, which must not outlive RESULT_RETENTION_SECONDS."""
    delivery, _ = _claimed(deliveries)
    assert deliveries.delivered(delivery) == 1
    record = redis_client.hgetall(keys.callback(delivery.id))
    assert "snapshot" not in record
    assert record["status"] == "delivered" and record["job_id"] == JOB
    assert 0 < redis_client.ttl(keys.callback(delivery.id)) <= settings.job_ttl_seconds


def test_delivered_at_when_recorded_early_in_a_second_then_its_microseconds_have_six_digits(
    settings: Settings, deliveries: DeliveryStore, redis_client: redis.Redis, redis_url: str
) -> None:
    """`<seconds>.<microseconds>` reads as a number only zero-padded (5 µs is `.000005`, not
    `.5`): delivered while Redis' clock is in the first tenth of a second."""
    store = JobStore(redis.Redis.from_url(redis_url), settings)
    for n in range(20):
        job_id = f"44444444-4444-4444-8444-{n:012d}"
        create(redis_url, settings, job_id)
        end_job(store, job_id)
        [delivery] = deliveries.claim(10).deliveries
        poll(lambda: redis_client.time()[1] < 50_000, timeout=5, interval=0.002, what="early")
        before = redis_client.time()
        deliveries.delivered(delivery)
        after = redis_client.time()
        if before[0] != after[0] or after[1] >= 100_000:
            continue  # the clock left the window meanwhile (a loaded host): again
        stamp = redis_client.hget(keys.callback(delivery.id), "delivered_at") or ""
        assert re.fullmatch(rf"{before[0]}\.0\d{{5}}", stamp), stamp
        return
    pytest.fail("never delivered in the first tenth of a second")
