"""What one SSE client receives: replay from a Redis Stream, then live events, in order, each
exactly once.

Two feeds share this code: a job (its own Stream; ends after the terminal event) and a token
(the token's Stream, which interleaves every event of its jobs; never ends). Ids are Redis Stream
ids of the feed's Stream, totally ordered; a live notification at or below the last id this
client already has is a duplicate of the replay and is skipped.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

from sse_starlette import ServerSentEvent

from yousync.api.streaming.events import (
    RESYNC,
    SHUTDOWN,
    EventHub,
    Notification,
    ShutdownSignal,
    parse_stream_id,
)
from yousync.api.streaming.read_batcher import StreamReadBatcher
from yousync.core import keys
from yousync.core.jobs import Event
from yousync.observability import metrics

log = logging.getLogger(__name__)
_STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
SHUTDOWN_COMMENT = "server shutting down; reconnect with Last-Event-ID"


class JobNotFound(Exception):
    pass


class InvalidLastEventId(Exception):
    pass


class AlreadyFinished(Exception):
    """The client has already received the terminal event: answer 204 so EventSource stops."""


@dataclass(frozen=True)
class Feed:
    """The Stream one client follows, and how its live notifications map onto that Stream."""

    stream_key: str
    job_id: str | None = None
    token_id: str | None = None

    @classmethod
    def for_job(cls, job_id: str) -> Feed:
        return cls(stream_key=keys.job_events(job_id), job_id=job_id)

    @classmethod
    def for_token(cls, token_id: str) -> Feed:
        return cls(stream_key=keys.token_events(token_id), token_id=token_id)

    @property
    def ends_at_terminal(self) -> bool:
        return self.job_id is not None

    def note_id(self, note: Notification) -> str:
        return note.id if self.job_id else note.token_event_id

    def note_frame(self, note: Notification) -> bytes:
        return note.job_frame if self.job_id else note.token_frame


def _valid_last_id(last_event_id: str | None) -> str | None:
    if not last_event_id:
        return None
    if not _STREAM_ID.match(last_event_id):
        raise InvalidLastEventId("Last-Event-ID is not an event id of this API")
    return last_event_id


async def check_job_stream_start(
    reads: StreamReadBatcher, job_id: str, last_event_id: str | None
) -> str | None:
    """Decide before the response starts, since after a 200 no error status can be sent.
    Returns the validated Last-Event-ID (or None)."""
    feed = Feed.for_job(job_id)
    tail = await reads.tail(feed.stream_key)
    if not tail:
        raise JobNotFound(job_id)
    last = _valid_last_id(last_event_id)
    latest = tail[-1]
    if last:
        if parse_stream_id(last) > parse_stream_id(latest.id):
            raise InvalidLastEventId("Last-Event-ID is not an event of this job")
        if latest.status.terminal and last == latest.id:
            raise AlreadyFinished(job_id)
    return last


async def check_token_stream_start(last_event_id: str | None) -> str | None:
    return _valid_last_id(last_event_id)


async def _initial(reads: StreamReadBatcher, feed: Feed, last: str | None) -> list[Event]:
    if last:
        return await reads.after(feed.stream_key, last)
    if feed.job_id:
        return await reads.tail(feed.stream_key)
    # A token's current state: the newest event of each of its jobs, in Stream order.
    recent = await reads.tail(feed.stream_key, count=1000)
    seen: set[str] = set()
    latest_per_job = []
    for event in reversed(recent):
        if event.fields.get("job_id") not in seen:
            seen.add(event.fields.get("job_id", ""))
            latest_per_job.append(event)
    return latest_per_job[::-1]


def jittered_retry(base_ms: int) -> int:
    """A client's `retry:` delay, uniform in [base/2, 3·base/2]: when a restart drops every
    stream at once, the reconnects spread over a whole `base` instead of landing together."""
    return base_ms // 2 + random.randrange(base_ms + 1)


def jittered_ping(base_seconds: float) -> float:
    """A stream's keep-alive period, uniform in [¾, 1¼] × base. Streams opened together in a
    storm would otherwise ping together every period, thousands of writes in one moment
    (measured: a 95 ms delivery stall 15 s after a 10,000-client storm). Still well under a
    proxy's idle timeout (nginx: 60 s) for the default 15 s."""
    return base_seconds * random.uniform(0.75, 1.25)


# What a client is about to receive: id, JSON data, whether it ends a job's stream, and the
# event already encoded for the wire when it is a live notification (encoded once per process).
_Outgoing = tuple[str, str, bool, bytes | None]


# An event this release cannot parse (written by a newer one mid-deploy: a stage it does not
# know) is skipped with a warning; the stream goes on with the next one instead of ending every
# client of the job with a 500. (pydantic's ValidationError is a ValueError.)
_UNREADABLE = (ValueError, KeyError)


def _from_events(events: list[Event]) -> list[_Outgoing]:
    outgoing: list[_Outgoing] = []
    for event in events:
        try:
            outgoing.append(
                (event.id, event.snapshot().model_dump_json(), event.status.ends_stream, None)
            )
        except _UNREADABLE as exc:
            log.warning("skipped an unreadable event %s: %s", event.id, exc)
    return outgoing


def _from_note(feed: Feed, note: Notification) -> list[_Outgoing]:
    try:
        return [(feed.note_id(note), note.data, note.terminal, feed.note_frame(note))]
    except _UNREADABLE as exc:
        log.warning("skipped an unreadable event %s: %s", note.id, exc)
        return []


async def feed_events(
    reads: StreamReadBatcher,
    hub: EventHub,
    feed: Feed,
    *,
    last_event_id: str | None,
    retry_ms: int,
    shutdown: ShutdownSignal,
) -> AsyncIterator[ServerSentEvent | bytes]:
    with hub.subscribe(job_id=feed.job_id, token_id=feed.token_id) as sub:
        shutdown.attach(sub)
        last = last_event_id or "0-0"
        last_position = parse_stream_id(last)
        pending = _from_events(await _initial(reads, feed, last_event_id))
        if last_event_id:
            metrics.sse_replay(len(pending))
        retry: int | None = jittered_retry(retry_ms)
        while True:
            for event_id, data, terminal, frame in pending:
                position = parse_stream_id(event_id)
                if position <= last_position:
                    continue
                if frame is not None and retry is None:
                    yield frame
                else:
                    yield ServerSentEvent(data=data, id=event_id, retry=retry)
                metrics.sse_event_delivered()
                retry = None
                last, last_position = event_id, position
                if terminal and feed.ends_at_terminal:
                    return
            pending = []  # delivered: not kept alive while this client idles
            item = await sub.get()
            if item is SHUTDOWN:
                yield ServerSentEvent(comment=SHUTDOWN_COMMENT)
                return
            if item is RESYNC:
                pending = _from_events(await reads.after(feed.stream_key, last))
                if not pending and feed.job_id and not await reads.tail(feed.stream_key):
                    # The job's Stream is gone (deleted, or expired) while notifications were
                    # not heard: its `deleted` event was missed, and nothing more will come.
                    return
            else:
                assert isinstance(item, Notification)
                pending = _from_note(feed, item)
