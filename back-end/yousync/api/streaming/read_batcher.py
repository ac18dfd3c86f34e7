"""Stream reads of every SSE client starting at once, coalesced into a few Redis round trips.

Why: after a restart or a deploy every browser reconnects within its `retry:` delay. When each
stream start borrowed a pooled connection for its own XREVRANGE, 1,000 simultaneous starts
queued for a pool of 50, waited out its 2 s timeout and were answered 503 — and EventSource
never retries a non-200, so those progress bars stopped for good. Here a start only queues its
read; one flusher per process sends everything queued as one pipeline on a connection of its
own, and while that round trip is in flight the next batch gathers. A storm of N starts costs a
handful of round trips instead of N pooled connections, and nothing waits on a pool, so only a
real outage (the pipeline itself fails) produces an error — which the API answers 503 with
`Retry-After`.

Identical reads queued at once (several tabs of one job reconnecting after the same restart)
share one answer: `StreamRead` is hashable and the results are never mutated by readers.
"""

from __future__ import annotations

import asyncio
from itertools import islice

from redis.exceptions import RedisError

from yousync.core.jobs import AsyncJobStore, Event, StreamRead


class StreamReadBatcher:
    def __init__(self, store: AsyncJobStore, *, max_batch: int = 512) -> None:
        self._store = store
        self._max_batch = max_batch
        self._pending: dict[StreamRead, asyncio.Future[list[Event]]] = {}
        self._flusher: asyncio.Task[None] | None = None

    async def read(self, read: StreamRead) -> list[Event]:
        future = self._pending.get(read)
        if future is None:
            loop = asyncio.get_running_loop()
            future = self._pending[read] = loop.create_future()
            if self._flusher is None:
                self._flusher = loop.create_task(self._flush(), name="stream-read-batcher")
        # Shielded: a client that leaves while waiting must not cancel the answer others share.
        return await asyncio.shield(future)

    async def tail(self, stream_key: str, count: int = 1) -> list[Event]:
        return await self.read(StreamRead(stream_key, count=count))

    async def after(self, stream_key: str, last_id: str) -> list[Event]:
        return await self.read(StreamRead(stream_key, after=last_id))

    async def _flush(self) -> None:
        try:
            # One turn of the loop first, so every start that arrived with this one joins it.
            await asyncio.sleep(0)
            while self._pending:
                batch = dict(islice(self._pending.items(), self._max_batch))
                for read in batch:
                    del self._pending[read]
                try:
                    results = await self._store.read_streams(list(batch))
                except (RedisError, OSError) as exc:
                    for future in batch.values():
                        # One exception object per waiter: each raises it in its own task.
                        error = RedisError(f"stream read failed: {exc}")
                        error.__cause__ = exc
                        _settle(future, error)
                    continue
                except BaseException:  # cancelled at shutdown: nobody waits forever
                    for future in batch.values():
                        future.cancel()
                    raise
                for future, events in zip(batch.values(), results, strict=True):
                    _settle(future, events)
        finally:
            self._flusher = None
            for future in self._pending.values():  # only when the flusher itself is cancelled
                future.cancel()
            self._pending.clear()


def _settle(future: asyncio.Future[list[Event]], outcome: list[Event] | BaseException) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
