"""Create jobs and write their events straight through the product's stores, as the worker
would, so a benchmark can produce exactly the event load it wants without a worker in the loop.
(The same few lines as tests/helpers/jobs.py; benchmarks do not import from tests.)

Every Redis connection opened here is named `bench-…` (CLIENT SETNAME), so a benchmark can
tell its own connections from the server's in `CLIENT LIST`.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import redis
import redis.asyncio as aioredis

from yousync.core.config import Settings
from yousync.core.jobs import AsyncJobStore, JobStore

BENCH_CLIENT_PREFIX = "bench-"


def create_jobs(redis_url: str, token_id: str, count: int, **markers: Any) -> list[str]:
    """`count` new queued jobs of one token (one Lua write each, like the upload handler)."""
    job_ids = [str(uuid.uuid4()) for _ in range(count)]

    async def create() -> None:
        client = aioredis.Redis.from_url(redis_url, client_name=f"{BENCH_CLIENT_PREFIX}setup")
        store = AsyncJobStore(client, Settings(redis_url=redis_url))
        try:
            # 50 at a time: redis-py's default asyncio pool refuses more concurrent commands.
            for offset in range(0, count, 50):
                chunk = job_ids[offset : offset + 50]
                await asyncio.gather(
                    *(store.create(job_id, token_id, **markers) for job_id in chunk)
                )
        finally:
            await client.aclose()

    asyncio.run(create())
    return job_ids


def sync_store(redis_url: str, name: str = "writer") -> JobStore:
    """The worker's blocking store, on a named connection."""
    client = redis.Redis.from_url(redis_url, client_name=f"{BENCH_CLIENT_PREFIX}{name}")
    return JobStore(client, Settings(redis_url=redis_url))
