"""The Celery application both processes share: broker, serialization, queues and routing.

The API publishes through it by task name (`send_task`) and the worker (yousync.worker.celery_app)
adds its tasks, Beat's schedule and its signals to it. Settings (reasons in ARCHITECTURE.md and
CELERY_GUIDE.md §3): JSON only, late acks with redelivery when a worker dies, one task prefetched
per process (tasks are long), task events on so Flower sees them, and a broker visibility timeout
longer than the hard time limit so Redis does not redeliver running tasks. Task and queue names
are the wire contract: renaming them strands messages already queued during a deploy.

Every task message also carries the time it was published (`published_at`, set by a
`before_task_publish` handler below), which is what `yousync_queue_oldest_age_seconds` reads
(yousync/observability/broker_queues.py; ARCHITECTURE.md "Queue depth and alerts").
"""

from __future__ import annotations

import time
from typing import Any

from celery import Celery
from celery.signals import before_task_publish
from kombu.transport import redis as kombu_redis

from yousync.core.config import Settings, get_settings
from yousync.core.models import PUBLISHED_AT_HEADER

AUDIO_QUEUE = "audio_queue"
# Beat's sweeps (yousync/worker/tasks/maintenance.py) have their own queue, so a backlog of
# long analyses does not hold them up; `make dev`'s worker consumes both.
MAINTENANCE_QUEUE = "maintenance"
# The drain of due completion callbacks (yousync/worker/tasks/callbacks.py), sent by Beat every
# CALLBACK_TICK_SECONDS. A queue of its own, consumed by a small thread-pool worker of its own:
# an analysis worker whose processes are all busy for 15 minutes would hold callbacks that long.
CALLBACKS_QUEUE = "callbacks"
# The queues the product publishes to: the ones whose depth and workers /metrics reports.
QUEUES = (AUDIO_QUEUE, MAINTENANCE_QUEUE, CALLBACKS_QUEUE)


def queues_in_use(settings: Settings) -> tuple[str, ...]:
    """The queues a deployment with these settings needs workers for: `callbacks` only when
    callbacks are configured (else nobody runs its worker, and its absence is no fault)."""
    return tuple(q for q in QUEUES if q != CALLBACKS_QUEUE or settings.callbacks_enabled)


settings = get_settings()

celery_app = Celery("yousync", broker=settings.broker_url)
_transport_options: dict[str, Any] = {
    "visibility_timeout": settings.broker_visibility_timeout,
    # kombu scans for unacked tasks of dead workers only every 10th tick by default (~100 s
    # after the visibility timeout); scan every tick instead: one ZRANGE per worker per tick.
    "unacked_restore_interval": settings.broker_restore_interval_seconds,
    "unacked_restore_throttle": 1,
    "socket_connect_timeout": 3,
    "socket_timeout": 10,
}
celery_app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    # Results are kept for the maintenance tasks (an operator running a sweep by hand reads
    # what it did); `analyze_audio` ignores its result: a job's state is its Redis hash and
    # Stream and Flower reads task states from events. That matters in the API:
    # for a task with a result, `apply_async` touches Celery's result backend, which is built
    # once per thread (it is not thread-safe) — an entry-point scan and a new connection pool
    # in the upload threads (py-spy under bench/bench_upload_concurrency.py: a third of the
    # time spent publishing a task).
    result_backend=settings.broker_url if settings.broker_url.startswith("redis") else None,
    result_expires=3600,
    task_default_queue=AUDIO_QUEUE,
    task_routes={
        "tasks.audio_tasks.*": {"queue": AUDIO_QUEUE},
        "tasks.maintenance.*": {"queue": MAINTENANCE_QUEUE},
        "tasks.callbacks.*": {"queue": CALLBACKS_QUEUE},
    },
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_time_limit=settings.task_time_limit,
    task_soft_time_limit=settings.task_soft_time_limit,
    worker_send_task_events=True,
    task_send_sent_event=True,
    broker_transport_options=_transport_options,
    result_backend_transport_options=_transport_options,
    broker_connection_retry_on_startup=True,
    broker_connection_timeout=settings.enqueue_timeout_seconds,
    # The API enqueues inside a request: give up quickly and answer 503 rather than hang.
    task_publish_retry=True,
    task_publish_retry_policy={
        "max_retries": 2,
        "interval_start": 0,
        "interval_step": 0.5,
        "interval_max": 1,
    },
    timezone="UTC",
    enable_utc=True,
)


def _stamp_published_at(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """Stamp every task message with its publish time: an API upload, a retry, a Beat sweep, a
    `celery call`. Kombu's Redis messages carry no time of their own, and a queue's age is what
    says it backs up (a long queue of short tasks is fine). A retry is stamped anew: it waits
    from its own publish, not from the first. The signal is process-wide, so every app in a
    process that loaded this module stamps its messages."""
    if headers is not None:
        headers[PUBLISHED_AT_HEADER] = time.time()


before_task_publish.connect(_stamp_published_at, weak=False, dispatch_uid="yousync-published-at")


def redis_queue_keys(queue: str) -> list[str]:
    """The Redis lists a queue's messages wait in, as kombu's Redis transport names them: the
    queue's own name for priority 0 and `{queue}\\x06\\x16{step}` for each other priority
    step (kombu's `Channel._q_for_pri`). Publishers `LPUSH` and workers `BRPOP`, so each list's
    oldest message is at index -1."""
    options = celery_app.conf.broker_transport_options or {}
    steps = options.get("priority_steps", kombu_redis.PRIORITY_STEPS)
    sep = options.get("sep", kombu_redis.Channel.sep)
    return [queue if step == 0 else f"{queue}{sep}{step}" for step in steps]
