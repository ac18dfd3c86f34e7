"""Drive job state directly through the stores (as the worker would), for tests that need many
events quickly or at precise moments, without a worker in the loop."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import redis
import redis.asyncio as aioredis

from yousync.core import keys
from yousync.core.config import Settings
from yousync.core.jobs import AsyncJobStore, JobStore


def create_job(redis_url: str, token_id: str, job_id: str | None = None, **markers: Any) -> str:
    """A queued job as the API creates it; `markers` as the upload handler adds them
    (spool_path, source_format, size_bytes, sha256, …)."""
    job_id = job_id or str(uuid.uuid4())

    async def create() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            store = AsyncJobStore(client, Settings(redis_url=redis_url))
            await store.create(job_id, token_id, **markers)
        finally:
            await client.aclose()

    asyncio.run(create())
    return job_id


def sync_store(redis_url: str) -> JobStore:
    return JobStore(redis.Redis.from_url(redis_url), Settings(redis_url=redis_url))


def stream_ids(redis_url: str, job_id: str) -> list[str]:
    """Every event id in the job's Stream, oldest first: what an exactly-once reader must get."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    return [entry_id for entry_id, _ in client.xrange(keys.job_events(job_id))]
