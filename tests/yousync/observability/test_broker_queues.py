"""Reading queue depth, queue age and live workers from a broker's Redis (real Redis, on a db
no worker consumes; messages written as kombu's Redis transport writes them)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis

from devtools import stack
from yousync.core import keys
from yousync.core.broker import AUDIO_QUEUE, MAINTENANCE_QUEUE, redis_queue_keys
from yousync.core.models import PUBLISHED_AT_HEADER
from yousync.observability import broker_queues

SPARE_DB = 6
QUEUES = {queue: redis_queue_keys(queue) for queue in (AUDIO_QUEUE, MAINTENANCE_QUEUE)}


@pytest.fixture
def broker_url(redis_url: str) -> Iterator[str]:
    url = redis_url.rsplit("/", 1)[0] + f"/{SPARE_DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture
def broker(broker_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(broker_url)
    yield client
    client.close()


def message(published_at: float | None = None) -> str:
    """A task message as kombu's Redis transport stores it (body elided)."""
    headers = {"task": "tasks.x", "id": str(uuid.uuid4())}
    if published_at is not None:
        headers[PUBLISHED_AT_HEADER] = published_at
    return json.dumps(
        {
            "body": "",
            "content-type": "application/json",
            "headers": headers,
            "properties": {"delivery_tag": str(uuid.uuid4()), "priority": 0},
        }
    )


def read(
    url: str, reader: broker_queues.BrokerReader | None = None
) -> broker_queues.BrokerSnapshot:
    """One scrape's read, with a fresh client per event loop; `reader` keeps its memory."""

    async def run() -> broker_queues.BrokerSnapshot:
        client = aioredis.Redis.from_url(url, socket_connect_timeout=1)
        try:
            used = reader or broker_queues.BrokerReader(client, QUEUES, limit_seconds=1.0)
            used.client = client
            return await used.read()
        finally:
            await client.aclose()

    return asyncio.run(run())


def test_read_when_queues_are_empty_then_zero_length_age_and_workers(broker_url: str) -> None:
    snapshot = read(broker_url)
    assert snapshot.up
    assert snapshot.queues == {q: broker_queues.QueueStats(0, 0.0, 0) for q in QUEUES}


def test_read_when_messages_wait_in_priority_lists_then_length_sums_them_and_age_is_the_oldest(
    broker_url: str, broker: redis.Redis
) -> None:
    now = time.time()
    low, high = QUEUES[AUDIO_QUEUE][0], QUEUES[AUDIO_QUEUE][-1]
    # LPUSH as kombu publishes: the first pushed is the oldest, at index -1.
    broker.lpush(low, message(now - 100), message(now - 5))
    broker.lpush(high, message(now - 300), message(now - 1), message(now))
    broker.lpush(MAINTENANCE_QUEUE, message(now - 20))

    before = time.time()
    snapshot = read(broker_url)
    after = time.time()

    audio, maintenance = snapshot.queues[AUDIO_QUEUE], snapshot.queues[MAINTENANCE_QUEUE]
    assert audio.length == 5
    assert before - (now - 300) <= audio.oldest_age_seconds <= after - (now - 300)
    assert maintenance.length == 1
    assert before - (now - 20) <= maintenance.oldest_age_seconds <= after - (now - 20)


def test_read_when_oldest_message_has_no_header_then_aged_from_when_first_seen_there(
    broker_url: str, broker: redis.Redis
) -> None:
    """Messages of an older release (or of a publisher that never loaded core/broker.py) carry
    no publish time: their age is a lower bound that grows while they wait; unreadable bytes are
    treated the same."""
    broker.lpush(AUDIO_QUEUE, message(None), "not json at all")
    # Its client is replaced by read()'s, one per event loop; the reader keeps its memory.
    reader = broker_queues.BrokerReader(aioredis.Redis(), QUEUES, limit_seconds=1.0)

    first_seen = time.time()
    first = read(broker_url, reader).queues[AUDIO_QUEUE]
    time.sleep(0.3)  # let the headerless message wait
    second = read(broker_url, reader).queues[AUDIO_QUEUE]
    broker.rpop(AUDIO_QUEUE)  # consumed: the unreadable one is now the oldest, seen just now
    third = read(broker_url, reader).queues[AUDIO_QUEUE]
    checked = time.time()

    assert first.length == second.length == 2 and third.length == 1
    assert first.oldest_age_seconds == 0.0
    assert 0.3 <= second.oldest_age_seconds <= checked - first_seen
    assert third.oldest_age_seconds == 0.0


def test_read_when_workers_beat_and_leave_then_each_queue_counts_its_live_workers(
    broker_url: str, broker: redis.Redis
) -> None:
    broker_queues.heartbeat(broker, "w1@a", [AUDIO_QUEUE, MAINTENANCE_QUEUE], ttl=60)
    broker_queues.heartbeat(broker, "w2@b", [AUDIO_QUEUE], ttl=60)
    # A worker SIGKILLed a while ago: its entry is still there, its expiry passed.
    broker.zadd(keys.queue_workers(AUDIO_QUEUE), {"gone@c": time.time() - 1})

    both = read(broker_url).queues
    broker_queues.leave(broker, "w1@a", [AUDIO_QUEUE, MAINTENANCE_QUEUE])
    left = read(broker_url).queues

    assert (both[AUDIO_QUEUE].workers, both[MAINTENANCE_QUEUE].workers) == (2, 1)
    assert (left[AUDIO_QUEUE].workers, left[MAINTENANCE_QUEUE].workers) == (1, 0)
    # A beat also drops the entries of workers whose TTL passed: the set does not grow forever.
    broker_queues.heartbeat(broker, "w2@b", [AUDIO_QUEUE], ttl=60)
    assert broker.zrange(keys.queue_workers(AUDIO_QUEUE), 0, -1) == [b"w2@b"]


def test_read_when_broker_refuses_connections_then_down_not_raised() -> None:
    closed_port = stack.free_port()
    assert read(f"redis://127.0.0.1:{closed_port}/1") == broker_queues.BrokerSnapshot(up=False)


def test_read_when_broker_never_answers_then_down_within_its_limit() -> None:
    """A server that accepts and then says nothing (a hung Redis) costs the scrape its limit."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/1"
        assert read(url) == broker_queues.BrokerSnapshot(up=False)
