"""What one SSE client of a job receives: replay from the Stream, then live events, in order,
each exactly once, ending after the terminal event (DESIGN §3).

Ids are Redis Stream ids, totally ordered; a live notification at or below the last id this
client already has is a duplicate of the replay and is skipped.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

from sse_starlette import ServerSentEvent

from services.events import RESYNC, EventHub, Notification, parse_stream_id
from services.jobs import AsyncJobStore, Event

_STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")


class JobNotFound(Exception):
    pass


class InvalidLastEventId(Exception):
    pass


class AlreadyFinished(Exception):
    """The client has already received the terminal event: answer 204 so EventSource stops."""


@dataclass(frozen=True)
class StreamStart:
    job_id: str
    last_event_id: str | None


async def check_stream_start(
    store: AsyncJobStore, job_id: str, last_event_id: str | None
) -> StreamStart:
    """Decide before the response starts, since after a 200 no error status can be sent."""
    latest = await store.latest_event(job_id)
    if latest is None:
        raise JobNotFound(job_id)
    if last_event_id:
        if not _STREAM_ID.match(last_event_id):
            raise InvalidLastEventId("Last-Event-ID is not an event id of this API")
        if parse_stream_id(last_event_id) > parse_stream_id(latest.id):
            raise InvalidLastEventId("Last-Event-ID is not an event of this job")
        if latest.status.terminal and last_event_id == latest.id:
            raise AlreadyFinished(job_id)
    return StreamStart(job_id=job_id, last_event_id=last_event_id or None)


def _from_event(event: Event) -> tuple[str, str, bool]:
    return event.id, event.snapshot().model_dump_json(), event.status.terminal


def _from_note(note: Notification) -> tuple[str, str, bool]:
    return note.id, note.data, note.terminal


async def job_events(
    store: AsyncJobStore, hub: EventHub, start: StreamStart, *, retry_ms: int
) -> AsyncIterator[ServerSentEvent]:
    job_id = start.job_id
    with hub.subscribe(job_id=job_id) as sub:
        if start.last_event_id:
            last = start.last_event_id
            backlog = await store.events_after(job_id, last)
        else:
            latest = await store.latest_event(job_id)
            last = "0-0"
            backlog = [latest] if latest else []
        pending = [_from_event(event) for event in backlog]
        retry: int | None = retry_ms
        while True:
            for event_id, data, terminal in pending:
                if parse_stream_id(event_id) <= parse_stream_id(last):
                    continue
                yield ServerSentEvent(data=data, id=event_id, retry=retry)
                retry = None
                last = event_id
                if terminal:
                    return
            item = await sub.get()
            if item is RESYNC:
                pending = [_from_event(event) for event in await store.events_after(job_id, last)]
            else:
                assert isinstance(item, Notification)
                pending = [_from_note(item)]
