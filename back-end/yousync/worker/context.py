"""The worker process's clients, built once per process: settings, one Redis client (one
connection pool), the job store on it, S3 and the analysis server's client.

Everything in the worker — the analysis task, Beat's maintenance sweeps, telemetry — takes its
clients from `get()`, and `redis_client()` is the one recipe for a worker's Redis client.

Built on first use, never at import: Celery's prefork pool forks its children from the main
process, and a child must not inherit the parent's sockets (a connection pool, boto3's and
httpx's pools) — two processes talking over one socket interleave their replies. The main
process never needs the context (its `on_failure` makes a short-lived connection of its own, see
tasks/audio_tasks.py); should anything build one there anyway, a forked child forgets it
(`os.register_at_fork`) and builds its own.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import redis

from yousync.core.config import Settings, get_settings
from yousync.core.jobs import JobStore
from yousync.core.storage import Storage
from yousync.worker.analysis_client import AnalysisClient


def redis_client(settings: Settings, *, socket_timeout: float = 10.0) -> redis.Redis:
    """A worker's Redis client for `settings.redis_url`. Replies are strings
    (`decode_responses`); the health check re-tests a connection idle for 30 s, which a
    restarted Redis or a NAT timeout may have cut meanwhile."""
    return redis.Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=3,
        socket_timeout=socket_timeout,
        health_check_interval=30,
        decode_responses=True,
    )


@dataclass(frozen=True)
class WorkerContext:
    settings: Settings
    redis: redis.Redis
    store: JobStore
    storage: Storage
    analysis: AnalysisClient

    @classmethod
    def build(cls, settings: Settings) -> WorkerContext:
        client = redis_client(settings)
        return cls(
            settings=settings,
            redis=client,
            store=JobStore(client, settings),
            storage=Storage(settings),
            analysis=AnalysisClient(
                settings.analysis_server_url,
                timeout=settings.analysis_timeout_seconds,
                secret=settings.analysis_shared_secret,
            ),
        )

    def close(self) -> None:
        self.redis.close()
        self.analysis.close()


_lock = threading.Lock()
_current: WorkerContext | None = None


def get() -> WorkerContext:
    """This process's context, built from the process's settings on first use."""
    global _current
    current = _current
    if current is None:
        with _lock:
            if _current is None:
                _current = WorkerContext.build(get_settings())
            current = _current
    return current


def install(context: WorkerContext | None) -> WorkerContext | None:
    """Make `context` this process's context (tests and benchmarks point the worker's code at
    their own services); None forgets it, so the next `get()` builds one. Returns the
    context it replaced, which the caller closes if it wants to."""
    global _current
    with _lock:
        previous, _current = _current, context
    return previous


def _forget_in_child() -> None:
    """In a forked child: drop the parent's context (its sockets are the parent's: dropped,
    not closed, so nothing is sent or shut down on them) and replace the lock, which another
    thread of the parent may have held at the moment of the fork."""
    global _current, _lock
    _current = None
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)
