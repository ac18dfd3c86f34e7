"""Queue depth, queue age and live workers, read from the broker's Redis at scrape time.

* **Length**: the sum of `LLEN` over a queue's lists (kombu keeps one list per priority step:
  `yousync.core.broker.redis_queue_keys`).
* **Oldest age**: publishers `LPUSH` and workers `BRPOP`, so each list's oldest message is at
  index -1; its `published_at` header (stamped by every publisher, `yousync.core.broker`) says
  how long it has waited, by the publisher's clock (keep hosts in NTP). A message without the
  header (published by a release before this one, or by a client that did not load
  `yousync.core.broker`) is aged from the first scrape at which this process saw it at the
  head of its list: a lower bound, which still grows while the queue is stuck, so an alert
  fires late rather than never.
* **Workers**: every worker's main process renews its entry in one sorted set per queue it
  consumes (`keys.queue_workers`, scored by when the entry expires; yousync/worker/heartbeat.py
  calls `heartbeat` and `leave`). `ZCOUNT` of the entries not yet expired is the number of
  workers consuming that queue: a SIGKILLed worker or a lost host drops out after the TTL.

Why a sorted set per queue rather than a key per worker with a TTL: counting keys would need a
`SCAN` per scrape (unbounded round trips); a `ZCOUNT` per queue is one command, read in the same
pipeline as the lengths. Its cost is comparing expiry times written by the workers' clocks with
the API's: seconds against a TTL of half a minute, under NTP.

Only a Redis broker is read: with RabbitMQ (`CELERY_BROKER_URL=amqp://…`) the API has no broker
reader and exports none of these series (use RabbitMQ's own Prometheus plugin).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from yousync.core import keys
from yousync.core.models import PUBLISHED_AT_HEADER

if TYPE_CHECKING:
    import redis
    import redis.asyncio as aioredis

log = logging.getLogger(__name__)


# --- worker side ----------------------------------------------------------------------------


def heartbeat(client: redis.Redis, hostname: str, queues: Iterable[str], ttl: float) -> None:
    """One worker's beat (one round trip): renew its entry in each of its queues' sets and drop
    the entries of workers whose TTL passed, so the sets hold only recent hostnames."""
    now = time.time()
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        pipe.zadd(keys.queue_workers(queue), {hostname: now + ttl})
        pipe.zremrangebyscore(keys.queue_workers(queue), "-inf", now)
    pipe.execute()


def leave(client: redis.Redis, hostname: str, queues: Iterable[str]) -> None:
    """A worker shutting down cleanly drops out at once rather than after its TTL."""
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        pipe.zrem(keys.queue_workers(queue), hostname)
    pipe.execute()


# --- API side -------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueStats:
    length: int
    oldest_age_seconds: float
    workers: int


@dataclass(frozen=True)
class BrokerSnapshot:
    """The queues as read at one scrape; `up` is False when the broker did not answer."""

    up: bool
    queues: dict[str, QueueStats] = field(default_factory=dict)


def published_at(raw: bytes | str | None) -> tuple[float | None, str]:
    """The `published_at` header of a raw kombu message (None when absent or unreadable) and
    an identity for the message (its delivery tag, else its bytes) to age it without one."""
    if raw is None:
        return None, ""
    identity = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    try:
        message = json.loads(raw)
        tag = message.get("properties", {}).get("delivery_tag")
        identity = str(tag) if tag else identity
        value = message.get("headers", {}).get(PUBLISHED_AT_HEADER)
        return (float(value) if value is not None else None), identity
    except (ValueError, TypeError, AttributeError):
        return None, identity


class BrokerReader:
    """The API's reader of the broker's Redis: its own small client (created in the lifespan,
    so a broker on another server or db than the job state is read where it is), and the
    first-seen times of messages without a `published_at` header."""

    def __init__(
        self,
        client: aioredis.Redis,
        lists: Mapping[str, Sequence[str]],
        *,
        limit_seconds: float = 2.0,
    ) -> None:
        """`lists`: each queue's Redis lists (`yousync.core.broker.redis_queue_keys`)."""
        self.client = client
        self.limit_seconds = limit_seconds
        self._lists = {queue: tuple(names) for queue, names in lists.items()}
        # list key -> (identity of its oldest message, when first seen there); headerless only.
        self._first_seen: dict[str, tuple[str, float]] = {}

    async def read(self) -> BrokerSnapshot:
        """`LLEN` and `LINDEX -1` of every list and `ZCOUNT` of every queue's live workers, in
        one pipeline: one round trip, bounded by `limit_seconds`."""
        now = time.time()
        try:
            with anyio.fail_after(self.limit_seconds):
                async with self.client.pipeline(transaction=False) as pipe:
                    for queue, lists in self._lists.items():
                        for name in lists:
                            pipe.llen(name)
                            pipe.lindex(name, -1)
                        pipe.zcount(keys.queue_workers(queue), now, "+inf")
                    replies: list[Any] = await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("metrics: broker queues unavailable (%s)", exc)
            return BrokerSnapshot(up=False)
        stats = {}
        replies.reverse()  # pop() from the front
        for queue, lists in self._lists.items():
            length, oldest = 0, 0.0
            for name in lists:
                count, raw = int(replies.pop()), replies.pop()
                length += count
                oldest = max(oldest, self._age(name, raw if count else None, now))
            stats[queue] = QueueStats(length, oldest, int(replies.pop()))
        return BrokerSnapshot(up=True, queues=stats)

    def _age(self, name: str, raw: bytes | None, now: float) -> float:
        sent, identity = published_at(raw)
        if sent is not None or raw is None:
            self._first_seen.pop(name, None)
            return max(now - sent, 0.0) if sent is not None else 0.0
        seen = self._first_seen.get(name)
        if seen is None or seen[0] != identity:
            seen = self._first_seen[name] = (identity, now)
        return now - seen[1]


class BrokerCollector(Collector):
    """Renders the snapshot the /metrics handler just read (as the cluster collector does):
    one per scrape; nothing when the broker is not Redis (`snapshot` None)."""

    def __init__(self, snapshot: BrokerSnapshot | None) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        snap = self.snapshot
        if snap is None:
            return
        up = GaugeMetricFamily(
            "yousync_broker_metrics_up", "1 when the broker's queues could be read from Redis."
        )
        up.add_metric([], 1 if snap.up else 0)
        yield up
        if not snap.up:
            return
        length = GaugeMetricFamily(
            "yousync_queue_length",
            "Task messages waiting in a broker queue (all its priority lists).",
            labels=["queue"],
        )
        age = GaugeMetricFamily(
            "yousync_queue_oldest_age_seconds",
            "How long the oldest waiting message of a queue has waited (0 when empty).",
            labels=["queue"],
        )
        workers = GaugeMetricFamily(
            "yousync_workers",
            "Celery workers whose heartbeat says they consume the queue.",
            labels=["queue"],
        )
        for queue, stats in snap.queues.items():
            length.add_metric([queue], stats.length)
            age.add_metric([queue], stats.oldest_age_seconds)
            workers.add_metric([queue], stats.workers)
        yield from (length, age, workers)
