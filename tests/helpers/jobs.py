"""Drive job state directly through the stores (as the worker would), for tests that need many
events quickly or at precise moments, without a worker in the loop."""

from __future__ import annotations

import asyncio
import uuid

import redis
import redis.asyncio as aioredis

from yousync.core.config import Settings
from yousync.core.jobs import AsyncJobStore, JobStore


def create_job(redis_url: str, token_id: str, job_id: str | None = None) -> str:
    job_id = job_id or str(uuid.uuid4())

    async def create() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            await AsyncJobStore(client, Settings(redis_url=redis_url)).create(job_id, token_id)
        finally:
            await client.aclose()

    asyncio.run(create())
    return job_id


def sync_store(redis_url: str) -> JobStore:
    return JobStore(redis.Redis.from_url(redis_url), Settings(redis_url=redis_url))
