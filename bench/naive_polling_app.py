"""REFERENCE ONLY — never part of the product. The per-client polling loop that the event hub
(back-end/yousync/api/streaming/events.py) replaces, kept here so the fan-out benchmark can
measure both designs against the same Redis, clients and write load in one run.

`GET /naive/{job_id}` answers `text/event-stream` through the same sse-starlette response the
product uses (same pings, same send timeout), so the only difference is where events come
from: every connected client reads its job's hash from Redis once a second and sends it when
`updated_at` changed. Redis work therefore grows with the number of clients, idle or not, and
an event waits up to a full poll interval. The pool is sized the way a naive
implementation must be to survive at all (a BlockingConnectionPool with a timeout).

Run: `cd bench && REDIS_URL=redis://127.0.0.1:6379/0 uvicorn naive_polling_app:app`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

POLL_SECONDS = 1.0
TERMINAL = {"completed", "failed", "cancelled"}
# The product's internal markers never reach an event; the naive loop drops them the same way.
INTERNAL_PREFIXES = ("prepared_", "spool_path", "sha256", "s3_key", "last_event_id", "attempt")


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    pool = aioredis.BlockingConnectionPool.from_url(
        os.environ["REDIS_URL"], max_connections=100, timeout=5
    )
    app.state.redis = aioredis.Redis(connection_pool=pool)
    try:
        yield
    finally:
        await app.state.redis.aclose()
        await pool.aclose()


async def _poll(client: aioredis.Redis, job_id: str) -> AsyncIterator[dict[str, str]]:
    last_update: str | None = None
    while True:
        raw = await client.hgetall(f"yousync:job:{job_id}")
        fields = {
            key.decode(): value.decode()
            for key, value in raw.items()
            if not key.decode().startswith(INTERNAL_PREFIXES)
        }
        if fields.get("updated_at") != last_update:
            last_update = fields.get("updated_at")
            yield {"data": json.dumps(fields, separators=(",", ":"))}
            if fields.get("status") in TERMINAL:
                return
        await asyncio.sleep(POLL_SECONDS)


async def naive_progress(request: Request) -> Response:
    client: aioredis.Redis = request.app.state.redis
    job_id = request.path_params["job_id"]
    if not await client.exists(f"yousync:job:{job_id}"):
        return JSONResponse({"detail": "unknown job", "code": "job_not_found"}, status_code=404)
    return EventSourceResponse(_poll(client, job_id), ping=15, send_timeout=30)


async def healthz(_: Request) -> Response:
    return JSONResponse({"status": "ok"})


app = Starlette(
    routes=[Route("/naive/{job_id}", naive_progress), Route("/healthz", healthz)],
    lifespan=lifespan,
)
