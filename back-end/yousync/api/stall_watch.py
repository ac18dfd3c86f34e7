"""Marks running jobs that have written nothing for STALL_SECONDS with `stalled: true`.

A stuck worker cannot report its own stall, so an API process watches the set of active jobs
(scored by their last write, maintained by the write script). Every API process may run this:
the script's `stall` mode refuses a second mark, so they cannot double up. One ZRANGEBYSCORE per
check per process, whatever the number of clients.
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from yousync.core import keys
from yousync.core.jobs import AsyncJobStore, Refused, UnreadableRecord

log = logging.getLogger(__name__)


async def mark_stalled_once(
    client: aioredis.Redis, store: AsyncJobStore, *, stall_seconds: float
) -> list[str]:
    seconds, micros = await client.time()
    cutoff = seconds + micros / 1e6 - stall_seconds
    marked: list[str] = []
    for raw in await client.zrangebyscore(keys.ACTIVE_JOBS, "-inf", cutoff, start=0, num=100):
        job_id = raw.decode() if isinstance(raw, bytes) else str(raw)
        try:
            job = await store.get(job_id)
        except UnreadableRecord as exc:
            # One hash this release cannot read must not end the watch for every other job.
            log.warning("job %s: record unreadable, not watched for stalls: %s", job_id, exc)
            continue
        if job is None:
            await client.zrem(keys.ACTIVE_JOBS, job_id)
            continue
        try:
            await store.mark_stalled(job_id, job.token_id)
            marked.append(job_id)
        except Refused:
            continue
    return marked


async def watch_stalls(
    client: aioredis.Redis, store: AsyncJobStore, *, stall_seconds: float, every: float
) -> None:
    while True:
        try:
            for job_id in await mark_stalled_once(client, store, stall_seconds=stall_seconds):
                log.warning("job %s: no progress for %.0fs, marked stalled", job_id, stall_seconds)
        except RedisError as exc:
            log.debug("stall watch skipped a round: %s", exc)
        await asyncio.sleep(every)
