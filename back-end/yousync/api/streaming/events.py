"""The per-process event hub: one Redis pub/sub subscription feeding every SSE client.

Why: a Redis read loop per client costs Redis work proportional to the number of clients and
exhausts connection pools at a few hundred streams. Here one subscription per API
process receives every job notification (which carries the snapshot itself) and hands it to the
bounded in-process queues of the clients watching that job or token, so idle clients cost Redis
nothing and a live event costs one pub/sub message per process.

A client never loses an event to the hub: when its queue overflows (a slow reader) or the
subscription was lost and re-established (Redis restart), the client is told to `RESYNC` and
re-reads what it missed from the job's Stream, starting after the last id it delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Final, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from sse_starlette import ServerSentEvent

from yousync.core import keys
from yousync.core.models import JobSnapshot, JobStatus
from yousync.observability import metrics

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Notification:
    job_id: str
    token_id: str
    id: str  # the entry id in the job's Stream
    token_event_id: str  # the entry id in the token's Stream
    fields: dict[str, str]

    @cached_property
    def data(self) -> str:
        """The SSE data line, serialised once per process however many clients receive it."""
        return JobSnapshot.from_fields(self.fields).model_dump_json()

    @cached_property
    def job_frame(self) -> bytes:
        """The whole SSE event for job streams, encoded once per process: a busy job's
        clients then cost a queue hand-off and a socket write each, not an encode each."""
        return ServerSentEvent(data=self.data, id=self.id).encode()

    @cached_property
    def token_frame(self) -> bytes:
        """The same for token streams, whose ids are the token Stream's."""
        return ServerSentEvent(data=self.data, id=self.token_event_id).encode()

    @property
    def terminal(self) -> bool:
        """The last event of the job's stream (a terminal status, or `deleted`)."""
        return JobStatus(self.fields["status"]).ends_stream


class _Control:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


# Re-read the Stream after your last delivered id (overflow, or the hub reconnected).
RESYNC: Final = _Control("RESYNC")
# The server is shutting down: say so and end the stream; the client resumes elsewhere.
SHUTDOWN: Final = _Control("SHUTDOWN")


class Subscription:
    """One client's bounded mailbox: a list and at most one waiting future.

    Why not `asyncio.Queue`: with thousands of idle streams per process its three deques
    (about 2 KB) were the largest thing the product itself kept per client
    (bench/bench_sse_memory.py). A single consumer needs no getter/putter bookkeeping, and an
    item stays in the list if `get()` is cancelled, so a cancelled read loses nothing.
    """

    __slots__ = ("_items", "_limit", "_waiter", "resyncs")

    def __init__(self, limit: int) -> None:
        self._items: list[Notification | _Control] = []
        self._limit = limit
        self._waiter: asyncio.Future[None] | None = None
        self.resyncs = 0

    def offer(self, item: Notification | _Control) -> None:
        if len(self._items) >= self._limit:
            # Drop what is queued and leave one marker instead of blocking the hub (and with
            # it every other client) on this slow reader: RESYNC re-reads the Stream from the
            # client's last delivered id, so nothing is lost to it.
            self._items.clear()
            metrics.hub_resync("overflow")
            item = SHUTDOWN if item is SHUTDOWN else RESYNC
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> Notification | _Control:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        item = self._items.pop(0)  # at most `limit` items: cheaper than a deque's block
        if item is RESYNC:
            self.resyncs += 1
        return item


class ShutdownSignal:
    """Given to sse-starlette as `shutdown_event`: on server shutdown the library calls `set()`,
    which wakes this client's queue with SHUTDOWN, so no extra task per connection waits on it."""

    def __init__(self) -> None:
        self._set = False
        self._subscription: Subscription | None = None

    def attach(self, subscription: Subscription) -> None:
        self._subscription = subscription
        if self._set:
            subscription.offer(SHUTDOWN)

    def set(self) -> None:
        if not self._set:
            self._set = True
            if self._subscription is not None:
                self._subscription.offer(SHUTDOWN)

    def is_set(self) -> bool:
        return self._set


def parse_stream_id(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


class EventHub:
    def __init__(self, client: aioredis.Redis, *, queue_size: int = 64) -> None:
        self._client = client
        self._queue_size = queue_size
        self._by_job: dict[str, set[Subscription]] = defaultdict(set)
        self._by_token: dict[str, set[Subscription]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self._clients = 0
        self.streams_ended = 0
        self.connected = asyncio.Event()

    @property
    def client_count(self) -> int:
        """Kept as a counter: every stream start asks, and summing the index per start cost
        O(jobs) each — quadratic in a storm of thousands of reconnects."""
        return self._clients

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="event-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.connected.clear()
        metrics.hub_connected(False)

    @contextlib.contextmanager
    def subscribe(
        self, *, job_id: str | None = None, token_id: str | None = None
    ) -> Iterator[Subscription]:
        """Register before reading the Stream, so nothing written meanwhile can slip between."""
        sub = Subscription(self._queue_size)
        index, key = (self._by_job, job_id) if job_id else (self._by_token, token_id)
        assert key is not None
        index[key].add(sub)
        self._clients += 1
        metrics.sse_client_joined()
        try:
            yield sub
        finally:
            self._clients -= 1
            metrics.sse_client_left()
            self.streams_ended += 1
            subs = index.get(key)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del index[key]

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=False)
            try:
                await pubsub.subscribe(keys.EVENTS_CHANNEL)
                async for message in pubsub.listen():
                    if message["type"] == "subscribe":
                        # First subscription, or redis-py re-subscribed after a reconnect:
                        # anything published while we were away must be re-read by clients.
                        self.connected.set()
                        metrics.hub_connected(True)
                        self._resync_all()
                        backoff = 0.1
                    elif message["type"] == "message":
                        self._dispatch(message["data"])
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self.connected.clear()
                metrics.hub_connected(False)
                metrics.hub_reconnect()
                log.warning("event hub lost Redis (%s); reconnecting in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                with contextlib.suppress(Exception):
                    await cast("Callable[[], Awaitable[None]]", pubsub.aclose)()

    def _resync_all(self) -> None:
        metrics.hub_resync("resubscribe", self.client_count)
        for index in (self._by_job, self._by_token):
            for subs in index.values():
                for sub in subs:
                    sub.offer(RESYNC)

    def _dispatch(self, raw: bytes | str) -> None:
        metrics.hub_notification()
        try:
            payload = json.loads(raw)
            note = Notification(
                job_id=payload["job_id"],
                token_id=payload["token_id"],
                id=payload["id"],
                token_event_id=payload["token_event_id"],
                fields=payload["snapshot"],
            )
        except (ValueError, KeyError, TypeError):
            log.warning("event hub ignored a malformed notification: %r", raw[:200])
            return
        for sub in self._by_job.get(note.job_id, ()):
            sub.offer(note)
        for sub in self._by_token.get(note.token_id, ()):
            sub.offer(note)
