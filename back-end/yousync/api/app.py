"""The FastAPI application: `cd back-end && uvicorn main:app`.

Clients are built in the lifespan and handed out through `deps`, never at import time, so tests
run the real lifespan and a worker importing shared modules opens no API connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from importlib import metadata
from typing import Any

import aioboto3
import anyio
import httpx
import redis.asyncio as aioredis
from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from yousync.api import errors as api_errors
from yousync.api.deps import AppServices
from yousync.api.gc_policy import GcPolicy
from yousync.api.limits import UploadSlots
from yousync.api.router import health, metrics, pages, user_audio_router
from yousync.api.router.security import require_auth
from yousync.api.stall_watch import watch_stalls
from yousync.api.streaming.events import EventHub
from yousync.api.streaming.read_batcher import StreamReadBatcher
from yousync.api.uploads.staging import PART_SENDERS, UploadStaging
from yousync.core import redis_policy
from yousync.core.config import Settings, get_settings
from yousync.core.jobs import AsyncJobStore
from yousync.core.models import ANALYZE_TASK
from yousync.core.storage import Storage, s3_client_kwargs
from yousync.observability import logging_setup
from yousync.observability import metrics as api_metrics
from yousync.observability.broker_queues import BrokerReader

log = logging.getLogger("yousync.api")


def _enqueue(job_id: str, task_id: str) -> None:
    """Blocking publish to the broker; the API runs it in a worker thread. By the task's name
    and the workers' routing: the API never imports worker code (the task module would bring
    the pipeline, pydub and the audio preparation into every API process). No result is
    expected (the job's state is its Redis hash), so no result backend is touched either."""
    from yousync.core.broker import AUDIO_QUEUE, celery_app

    celery_app.send_task(
        ANALYZE_TASK,
        args=[job_id],
        task_id=task_id,
        queue=AUDIO_QUEUE,
        ignore_result=True,
        result_cls=_Published,
    )


class _Published:
    """What `send_task` hands back instead of an AsyncResult, whose construction would build
    this thread's result backend for a result nobody reads."""

    def __init__(self, task_id: str) -> None:
        self.id = task_id
        self.ignored = True


def _revoke(task_id: str) -> None:
    """Blocking broadcast to the workers: a queued task is dropped when it is received."""
    from yousync.core.broker import celery_app

    celery_app.control.revoke(task_id)


def _broker_reader(settings: Settings) -> BrokerReader | None:
    """The /metrics reader of the broker's queues and workers, on a small client of its own:
    the broker may live on another server (or db) than the job state. None for a broker that
    is not Redis (RabbitMQ has its own exporter)."""
    if not settings.broker_is_redis:
        return None
    from yousync.core.broker import queues_in_use, redis_queue_keys

    pool = aioredis.BlockingConnectionPool.from_url(
        settings.broker_url,
        max_connections=2,
        timeout=2,
        socket_connect_timeout=2,
        socket_timeout=2,
    )
    return BrokerReader(
        aioredis.Redis(connection_pool=pool),
        {queue: redis_queue_keys(queue) for queue in queues_in_use(settings)},
    )


def _broker_ping() -> None:
    from yousync.core.broker import celery_app

    with celery_app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=2)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    # Warn when Redis would evict jobs or persists nothing; in prod an evicting Redis stops the
    # start here, before the process serves anything (yousync/core/redis_policy.py).
    await anyio.to_thread.run_sync(redis_policy.check, settings, log)
    async with contextlib.AsyncExitStack() as stack:
        # First in, so last out: once everything else has stopped, this process's live
        # gauges leave the host's sums (observability/multiprocess.py).
        stack.enter_context(api_metrics.serving(settings.prometheus_multiproc_dir))
        # Bounded, blocking pool: under load requests wait briefly for a connection instead of
        # failing with MaxConnectionsError.
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=settings.redis_max_connections,
            timeout=2,
            socket_connect_timeout=2,
            socket_timeout=5,
            health_check_interval=30,
        )
        client = aioredis.Redis(connection_pool=pool)
        stack.push_async_callback(client.aclose)
        stack.push_async_callback(pool.aclose)
        # The hub's subscription blocks on reads forever: its own client, no socket timeout.
        hub_client = aioredis.Redis.from_url(settings.redis_url, socket_connect_timeout=2)
        stack.push_async_callback(hub_client.aclose)
        hub = EventHub(hub_client, queue_size=settings.sse_client_queue_size)
        hub.start()
        stack.push_async_callback(hub.stop)

        store = AsyncJobStore(client, settings)
        # Stream starts read through one batching flusher on a connection of its own, so a
        # storm of reconnects never waits on the pool (yousync/api/streaming/read_batcher.py).
        reads_client = aioredis.Redis.from_url(
            settings.redis_url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30
        )
        stack.push_async_callback(reads_client.aclose)
        stream_reads = StreamReadBatcher(AsyncJobStore(reads_client, settings))
        stall_task = asyncio.create_task(
            watch_stalls(
                client,
                store,
                stall_seconds=settings.stall_seconds,
                every=settings.stall_check_seconds,
            ),
            name="stall-watch",
        )
        stack.callback(stall_task.cancel)

        s3 = await stack.enter_async_context(
            aioboto3.Session().client("s3", **s3_client_kwargs(settings))
        )
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=2.0))
        # Building a boto3 client reads its service models from disk: not on the event loop.
        staging_store = await anyio.to_thread.run_sync(
            lambda: Storage(settings, max_pool_connections=PART_SENDERS)
        )
        staging = UploadStaging(settings, staging_store)
        stack.callback(staging.close)

        async def redis_ready() -> Any:
            return await client.ping()

        async def broker_ready() -> Any:
            return await anyio.to_thread.run_sync(_broker_ping, abandon_on_cancel=True)

        async def s3_ready() -> Any:
            return await s3.head_bucket(Bucket=settings.s3_bucket)

        async def redis_policy_ready() -> Any:
            """Optional (never fails readiness): down while Redis would evict jobs, or, in
            prod, persists nothing; the error says which."""
            policy = await redis_policy.read_policy_async(client)
            found = redis_policy.problems(
                policy,
                where="REDIS_URL",
                environment=settings.environment,
                retention_seconds=settings.job_ttl_seconds,
            )
            warnings = [problem.message for problem in found if problem.level >= logging.WARNING]
            if warnings:
                raise redis_policy.RedisPolicyProblem("; ".join(warnings))

        async def analysis_ready() -> Any:
            response = await http.get(
                f"{settings.analysis_server_url}/readyz",
                headers={"Authorization": f"Bearer {settings.analysis_shared_secret}"},
            )
            response.raise_for_status()

        app.state.readiness_checks = {
            "redis": redis_ready,
            "broker": broker_ready,
            "s3": s3_ready,
            "analysis_server": analysis_ready,
            "redis_policy": redis_policy_ready,
        }
        app.state.readiness_optional = frozenset({"redis_policy"})
        app.state.services = AppServices(
            settings=settings,
            jobs=store,
            hub=hub,
            stream_reads=stream_reads,
            enqueue=_enqueue,
            revoke=_revoke,
            upload_slots=UploadSlots(settings.upload_max_concurrent_per_client),
            staging=staging,
        )
        broker_reader = _broker_reader(settings)
        if broker_reader is not None:
            stack.push_async_callback(broker_reader.client.aclose)
            stack.push_async_callback(broker_reader.client.connection_pool.aclose)
        app.state.metrics = api_metrics.ApiMetrics(
            redis=client, broker=broker_reader, multiproc_dir=settings.prometheus_multiproc_dir
        )
        gc_policy = GcPolicy(
            every=settings.gc_freeze_every_seconds,
            open_streams=lambda: hub.client_count,
            ended_streams=lambda: hub.streams_ended,
        )
        gc_policy.start()
        if gc_policy.every > 0:
            gc_task = asyncio.create_task(gc_policy.run(), name="gc-policy")
            stack.callback(gc_task.cancel)
        yield


def create_app() -> FastAPI:
    settings = get_settings()
    logging_setup.configure("api", level=settings.log_level, log_format=settings.log_format)
    app = FastAPI(
        title="YouSync API",
        version=metadata.version("yousync-backend"),
        summary="Upload a dubbing recording, get 202 at once, follow the analysis live over SSE.",
        lifespan=lifespan,
    )
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origin_list,
        allow_methods=["GET", "POST"],
        allow_headers=["Authorization", "Content-Type", "Last-Event-ID", "Idempotency-Key"],
        expose_headers=["Location"],
    )
    # Outermost: one log line (and the HTTP metrics) per request, preflights included.
    app.add_middleware(logging_setup.RequestLogMiddleware)
    api_errors.install(app)
    app.include_router(health.router)
    app.include_router(metrics.router, dependencies=[Depends(require_auth)])
    app.include_router(user_audio_router.router, dependencies=[Depends(require_auth)])
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=pages.STATIC_DIR), name="static")
    return app


app = create_app()
