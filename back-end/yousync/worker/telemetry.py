"""What a worker (and Beat) tells the outside: structured log lines and stage timings.

* Logging: Celery's `setup_logging` signal hands logging to
  `yousync.observability.logging_setup`, so the worker's lines have the API's format;
  `task_prerun` puts the task's job id in the log context.
* One line per task start and end (state, seconds, retries) and per pipeline stage end
  (`stage finished`, with its duration and the stage that follows), all with `job_id`.
* Stage durations go to the cluster histogram in Redis
  (`yousync.observability.metrics.record_stage`) that the API's /metrics renders — including
  `queued`, the wait from upload to a worker picking the task up (measured from the job's
  `created_at`, written by the API's clock: keep hosts in NTP).

Telemetry never fails a job: a Redis error here is logged at debug level and dropped.
"""

from __future__ import annotations

import logging
import sys
import time
from datetime import datetime
from typing import Any

import redis
from celery.signals import setup_logging, task_postrun, task_prerun

from yousync.core import keys
from yousync.core.config import get_settings
from yousync.core.models import ANALYZE_TASK
from yousync.core.stages import Stage
from yousync.observability import logging_setup, metrics
from yousync.worker import context

log = logging.getLogger("yousync.worker")


# task id -> (perf_counter at start, context token); a prefork child runs one task at a time,
# so this holds at most a few entries.
_running: dict[str, tuple[float, Any]] = {}


def _service_name() -> str:
    for name in ("worker", "beat", "flower"):
        if name in sys.argv[1:]:
            return name
    return "celery"


def _configure_logging(loglevel: Any = None, logfile: str | None = None, **_: Any) -> None:
    settings = get_settings()
    level = loglevel if loglevel not in (None, "") else settings.log_level
    logging_setup.configure(
        _service_name(), level=level, log_format=settings.log_format, logfile=logfile or None
    )


def _job_id_of(task: Any, args: Any, kwargs: Any) -> str | None:
    if getattr(task, "name", "") != ANALYZE_TASK:
        return None
    if args:
        return str(args[0])
    return str((kwargs or {}).get("job_id")) if (kwargs or {}).get("job_id") else None


def _on_task_start(task_id: str, task: Any, args: Any = None, kwargs: Any = None, **_: Any) -> None:
    job_id = _job_id_of(task, args, kwargs)
    token = logging_setup.JOB_ID.set(job_id)
    _running[task_id] = (time.perf_counter(), token)
    retries = getattr(task.request, "retries", 0) or 0
    log.info("task started", extra={"task": task.name, "task_id": task_id, "retries": retries})
    if job_id and retries == 0:
        _record_queue_wait(job_id)


def _on_task_end(
    task_id: str, task: Any, retval: Any = None, state: str | None = None, **_: Any
) -> None:
    started, token = _running.pop(task_id, (None, None))
    extra: dict[str, Any] = {"task": task.name, "task_id": task_id, "state": state}
    if started is not None:
        extra["seconds"] = round(time.perf_counter() - started, 3)
    if isinstance(retval, str | int | float | bool):
        extra["result"] = retval
    log.info("task finished", extra=extra)
    if token is not None:
        logging_setup.JOB_ID.reset(token)


def _record_queue_wait(job_id: str) -> None:
    """The job's first start: time since the upload was accepted (stage `queued`)."""
    try:
        # The worker child's context (built on first use, i.e. after the fork). Two fields, not
        # the record: the pipeline reads the whole record right after this, on every start.
        ctx = context.get()
        stage, created_at = ctx.redis.hmget(keys.job(job_id), ["stage", "created_at"])
        if stage != Stage.QUEUED or not isinstance(created_at, str) or not created_at:
            return  # (the context's client decodes replies: str, never bytes)
        created = datetime.fromisoformat(created_at.replace("Z", "+00:00"))
        waited = max(time.time() - created.timestamp(), 0.0)
        metrics.record_stage(ctx.redis, "queued", waited)
        log.info("stage finished", extra={"stage": "queued", "seconds": round(waited, 3)})
    except (redis.RedisError, OSError, ValueError) as exc:
        log.debug("telemetry: queue wait not recorded (%s)", exc)


def stage_finished(job_id: str, stage: str, seconds: float, *, next_stage: str) -> None:
    """Called by the worker's progress reporter when a stage ends (and the next begins)."""
    log.info(
        "stage finished",
        extra={
            "job_id": job_id,
            "stage": stage,
            "seconds": round(seconds, 3),
            "next_stage": next_stage,
        },
    )
    try:
        metrics.record_stage(context.get().redis, stage, seconds)
    except (redis.RedisError, OSError) as exc:
        log.debug("telemetry: stage timing not recorded (%s)", exc)


def install() -> None:
    """Connect the signals (celery_app.py calls this once; `weak=False` keeps them alive)."""
    setup_logging.connect(_configure_logging, weak=False)
    task_prerun.connect(_on_task_start, weak=False)
    task_postrun.connect(_on_task_end, weak=False)
