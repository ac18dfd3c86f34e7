"""The worker's Celery app: `cd back-end && celery -A celery_app worker --queues=audio_queue`.

The shared app (yousync.core.broker: broker, queues, routing) plus what only the worker and Beat
need: the task modules, Beat's schedule, structured-log signals, the seed's `--queue` spelling and
the heartbeat that says which queues the worker consumes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click
from celery import bootsteps
from celery.signals import beat_init, celeryd_after_setup, worker_ready

from yousync.core import redis_policy
from yousync.core.broker import (
    AUDIO_QUEUE,
    CALLBACKS_QUEUE,
    MAINTENANCE_QUEUE,
    celery_app,
    settings,
)
from yousync.core.config import HOME_DIR
from yousync.worker import telemetry as worker_telemetry
from yousync.worker.heartbeat import QueueHeartbeat

__all__ = ["AUDIO_QUEUE", "CALLBACKS_QUEUE", "MAINTENANCE_QUEUE", "app", "celery_app", "settings"]

celery_app.conf.include = [
    "yousync.worker.tasks.audio_tasks",
    "yousync.worker.tasks.maintenance",
    "yousync.worker.tasks.callbacks",
]

# Beat's sweeps (yousync/worker/tasks/maintenance.py).
MAINTENANCE_TASKS = (
    "sweep_spool",
    "sweep_staged_uploads",
    "mark_stuck_jobs",
    "abort_stale_multipart_uploads",
    "sweep_old_audio",
    "retry_pending_deletions",
)
# Celery Beat (`celery -A celery_app beat`) sends each sweep every MAINTENANCE_INTERVAL_SECONDS;
# `expires` drops a sweep nobody ran before the next one was due instead of stacking them up.
_every = settings.maintenance_interval_seconds
celery_app.conf.beat_schedule = {
    name: {"task": f"tasks.maintenance.{name}", "schedule": _every, "options": {"expires": _every}}
    for name in MAINTENANCE_TASKS
}
# The drain of due completion callbacks, every CALLBACK_TICK_SECONDS, when a deployment can have
# callbacks at all (CALLBACK_URL, or hosts an upload may name). `expires`: a drain nobody took
# within a few ticks is dropped, a later one does its work (a few, not one: `expires` is an
# absolute time, and a worker whose clock runs a second ahead of Beat's would drop them all).
DRAIN_CALLBACKS_TASK = "tasks.callbacks.drain"
if settings.callbacks_enabled:
    _tick = settings.callback_tick_seconds
    celery_app.conf.beat_schedule["drain_callbacks"] = {
        "task": DRAIN_CALLBACKS_TASK,
        "schedule": _tick,
        "options": {"expires": max(5 * _tick, 5.0), "queue": CALLBACKS_QUEUE},
    }
celery_app.conf.beat_schedule_filename = str(HOME_DIR / "var" / "celerybeat-schedule")

# Structured logs with job_id, task/stage lines and stage timings (yousync/worker/telemetry.py).
worker_telemetry.install()

# `celery -A celery_app` looks for an attribute named `app` (or `celery`).
app = celery_app


class SeedQueueOption(bootsteps.Step):
    """`--queue=audio_queue`, as the seed's worker command spells it: Celery 5 knows only
    `--queues`/`-Q` and would refuse to start. The worker has selected its queues (all of
    them, without `-Q`) by the time its steps are built, so this narrows the selection."""

    def __init__(self, worker: Any, queue: str | None = None, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        if queue:
            worker.setup_queues(queue)


celery_app.user_options["worker"].add(
    click.Option(["--queue"], default=None, help="The seed's spelling of --queues (-Q).")
)
celery_app.steps["worker"].add(SeedQueueOption)
# Which queues this worker consumes, renewed in the broker's Redis (`yousync_workers{queue}`).
celery_app.steps["consumer"].add(QueueHeartbeat)


@worker_ready.connect
def _mark_ready(**_: Any) -> None:
    """Lets supervisors and the test fixtures know the worker consumes, without polling it."""
    if settings.worker_ready_file:
        Path(settings.worker_ready_file).touch()


@beat_init.connect
def _schedule_dir(**_: Any) -> None:
    Path(celery_app.conf.beat_schedule_filename).parent.mkdir(parents=True, exist_ok=True)


@celeryd_after_setup.connect
@beat_init.connect
def _check_redis_policy(**_: Any) -> None:
    """Warn when Redis would evict jobs or persists nothing; in prod refuse to start on an
    evicting Redis (yousync/core/redis_policy.py). A worker runs this once logging is set up
    and before it consumes; Beat before its first tick. Celery logs and swallows exceptions
    of signal handlers, so refusing is a SystemExit, which it lets through."""
    try:
        redis_policy.check(settings, logging.getLogger("yousync.worker"))
    except redis_policy.RedisPolicyError:
        raise SystemExit(1) from None
