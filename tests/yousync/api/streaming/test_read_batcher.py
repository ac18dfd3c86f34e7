"""The stream-start read batcher against a real Redis: reads asked for at once share round
trips, identical reads share one answer, a reader that leaves costs the others nothing, and an
outage reaches every waiter as a RedisError (which the API answers 503) without wedging the
next reads."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from tests.helpers.jobs import create_job, sync_store
from yousync.api.streaming.read_batcher import StreamReadBatcher
from yousync.core import keys
from yousync.core.config import Settings
from yousync.core.jobs import AsyncJobStore, Event, StreamRead

pytestmark = pytest.mark.integration
T = TypeVar("T")


class CountingStore(AsyncJobStore):
    """The real store, recording each pipeline's size (and optionally failing the next ones)."""

    def __init__(self, client: aioredis.Redis, settings: Settings) -> None:
        super().__init__(client, settings)
        self.batches: list[int] = []
        self.fail_next = 0

    async def read_streams(self, reads: Sequence[StreamRead]) -> list[list[Event]]:
        self.batches.append(len(reads))
        if self.fail_next:
            self.fail_next -= 1
            raise RedisConnectionError("Connection refused")
        return await super().read_streams(reads)


def run(redis_url: str, scenario: Callable[[CountingStore, StreamReadBatcher], Awaitable[T]]) -> T:
    async def main() -> T:
        client = aioredis.Redis.from_url(redis_url)
        try:
            store = CountingStore(client, Settings(redis_url=redis_url))
            return await scenario(store, StreamReadBatcher(store, max_batch=256))
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_batcher_when_a_thousand_starts_arrive_at_once_then_few_round_trips_answer_each(
    redis_url: str, token_id: str
) -> None:
    jobs = [create_job(redis_url, token_id) for _ in range(20)]
    store = sync_store(redis_url)
    for progress, job_id in enumerate(jobs):
        store.update(job_id, token_id, status="processing", progress=progress, stage="uploading")

    async def scenario(counting: CountingStore, batcher: StreamReadBatcher) -> Any:
        # 1,000 clients of 20 jobs, alternating tail reads and replays from the first event.
        firsts = {job: (await batcher.tail(keys.job_events(job), 10))[0].id for job in jobs}
        counting.batches.clear()
        reads = [
            batcher.tail(keys.job_events(jobs[n % 20]))
            if (n // 20) % 2
            else batcher.after(keys.job_events(jobs[n % 20]), firsts[jobs[n % 20]])
            for n in range(1000)
        ]
        return await asyncio.gather(*reads), counting.batches

    answers, batches = run(redis_url, scenario)
    # 40 distinct reads (20 jobs × 2 kinds) asked 25 times each: one pipeline holds them all.
    assert batches == [40]
    for n, events in enumerate(answers):
        assert len(events) == 1
        assert events[0].fields["progress"] == str(n % 20)


def test_batcher_when_more_distinct_reads_than_a_batch_then_split_and_all_answered(
    redis_url: str, token_id: str
) -> None:
    async def scenario(counting: CountingStore, batcher: StreamReadBatcher) -> Any:
        reads = [batcher.tail(keys.job_events(f"missing-{n}")) for n in range(600)]
        return await asyncio.gather(*reads), counting.batches

    answers, batches = run(redis_url, scenario)
    assert answers == [[]] * 600
    assert sum(batches) == 600 and max(batches) <= 256


def test_batcher_when_one_waiter_is_cancelled_then_the_shared_read_still_answers_the_others(
    redis_url: str, token_id: str
) -> None:
    job_id = create_job(redis_url, token_id)

    async def scenario(counting: CountingStore, batcher: StreamReadBatcher) -> Any:
        leaving = asyncio.create_task(batcher.tail(keys.job_events(job_id)))
        staying = asyncio.create_task(batcher.tail(keys.job_events(job_id)))
        await asyncio.sleep(0)
        leaving.cancel()
        return await staying, leaving

    events, leaving = run(redis_url, scenario)
    assert leaving.cancelled()
    assert events[0].fields["job_id"] == job_id


def test_batcher_when_redis_fails_then_every_waiter_gets_redis_error_and_next_reads_work(
    redis_url: str, token_id: str
) -> None:
    job_id = create_job(redis_url, token_id)

    async def scenario(counting: CountingStore, batcher: StreamReadBatcher) -> Any:
        counting.fail_next = 1
        failed = await asyncio.gather(
            *(batcher.tail(keys.job_events(f"{job_id}-{n}")) for n in range(5)),
            return_exceptions=True,
        )
        after = await batcher.tail(keys.job_events(job_id))
        return failed, after

    failed, after = run(redis_url, scenario)
    assert all(isinstance(error, RedisError) for error in failed)
    assert len({id(error) for error in failed}) == 5, "each waiter raises its own exception"
    assert after[0].fields["job_id"] == job_id
