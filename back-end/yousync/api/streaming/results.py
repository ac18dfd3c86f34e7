"""Reading a job for the result endpoint, including the `?wait=N` long-poll for curl users.

The long-poll waits on the process's event hub, not on a Redis poll loop: the request costs one
HGETALL at the start and one at the end, whatever N is.
"""

from __future__ import annotations

import anyio

from yousync.api.streaming.events import EventHub, Notification
from yousync.api.streaming.progress_stream import JobNotFound
from yousync.core.jobs import AsyncJobStore
from yousync.core.models import JobSnapshot


async def read_snapshot(store: AsyncJobStore, job_id: str) -> JobSnapshot:
    job = await store.get(job_id)
    if job is None:
        raise JobNotFound(job_id)
    return job.snapshot


async def wait_for_snapshot(
    store: AsyncJobStore, hub: EventHub, job_id: str, *, wait: float
) -> JobSnapshot:
    """The snapshot once the job is terminal, or after `wait` seconds, whichever is first; a
    job deleted meanwhile answers its last snapshot (status `deleted`)."""
    with hub.subscribe(job_id=job_id) as sub:
        snapshot = await read_snapshot(store, job_id)
        if wait <= 0 or snapshot.status.terminal:
            return snapshot
        with anyio.move_on_after(wait):
            while True:
                item = await sub.get()
                if isinstance(item, Notification):
                    if item.terminal:
                        return JobSnapshot.from_fields(item.fields)
                elif (snapshot := await read_snapshot(store, job_id)).status.terminal:
                    return snapshot
        return await read_snapshot(store, job_id)
