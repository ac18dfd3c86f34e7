"""The Celery task. It receives a job id only (never file bytes) and runs the pipeline;
what to retry and what to fail is decided here from the error's kind."""

from __future__ import annotations

import contextlib
import logging
import os
import random
from typing import Any

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from yousync.core.errors import PermanentError, StageError, TransientError
from yousync.core.jobs import JobStore, Refused
from yousync.core.models import ANALYZE_TASK
from yousync.worker import context
from yousync.worker.celery_app import (
    AUDIO_QUEUE,
    CALLBACKS_QUEUE,
    DRAIN_CALLBACKS_TASK,
    celery_app,
    settings,
)
from yousync.worker.pipeline import Pipeline

log = logging.getLogger(__name__)


def pipeline() -> Pipeline:
    """On this process's clients (yousync.worker.context: built once per worker process,
    after the fork, never at import time)."""
    ctx = context.get()
    return Pipeline(
        settings=ctx.settings, store=ctx.store, storage=ctx.storage, analysis=ctx.analysis
    )


def retry_delay(retries: int) -> float:
    """Exponential backoff from TASK_RETRY_DELAY with ±20 % jitter, so retries of many jobs
    that failed together do not hit the recovering service together."""
    return settings.task_retry_delay * (2.0**retries) * random.uniform(0.8, 1.2)


TIMEOUT = StageError("timeout", "The analysis took too long")


class AudioTask(Task):
    def on_failure(
        self,
        exc: BaseException,
        task_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        einfo: Any,
    ) -> None:
        """After a hard time limit Celery kills the child and, here in the worker's main
        process, acks the message: nothing would ever end the job, which would sit in
        `processing` until the stuck-job sweep. A short-lived connection rather than the
        process's context (`pipeline()`): built in this parent, its clients would be inherited
        by every child forked later."""
        if not isinstance(exc, TimeLimitExceeded) or not args:
            return
        job_id = str(args[0])
        client = context.redis_client(settings, socket_timeout=5)
        try:
            store = JobStore(client, settings)
            store.fail(job_id, TIMEOUT, retryable=True)
            # The child was killed by the limit, not by the job: not a crash (poison count).
            store.count_delivery(job_id, -1)
            log.warning("job %s: hard time limit (%ss); failed as timeout", job_id, exc.args[0])
        except RedisError as error:
            log.error("job %s: hard time limit, and Redis is unreachable: %s", job_id, error)
        finally:
            client.close()


@celery_app.task(
    base=AudioTask,
    bind=True,
    name=ANALYZE_TASK,
    queue=AUDIO_QUEUE,
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=settings.task_max_retries,
    ignore_result=True,  # see core/broker.py: the job hash is the result
)
def analyze_audio(self: Task, job_id: str) -> str:
    runner = pipeline()
    if not runner.begin_delivery(job_id, worker_pid=os.getpid()):
        return "failed"
    try:
        outcome = _run_through_redis_outages(self, runner, job_id)
    finally:
        runner.drop_fetched(job_id)
        with contextlib.suppress(RedisConnectionError):
            runner.end_delivery(job_id)
    if outcome in ENDED:
        _kick_callbacks(job_id)
    return outcome


# What `analyze_audio` returns when this delivery ended the job.
ENDED = frozenset({"completed", "failed"})


def _kick_callbacks(job_id: str) -> None:
    """The job just ended, and its end may owe a callback (queued by the same write): send
    a drain now rather than wait for Beat's next tick (up to CALLBACK_TICK_SECONDS). One publish;
    a job without a target costs the drain one empty claim. Beat's ticks stay the guarantee, so
    a publish that fails is only logged."""
    if not settings.callbacks_enabled:
        return
    try:
        celery_app.send_task(
            DRAIN_CALLBACKS_TASK,
            queue=CALLBACKS_QUEUE,
            expires=max(5 * settings.callback_tick_seconds, 5.0),
        )
    except Exception as exc:  # the broker is briefly away: the next tick sends one
        log.warning("job %s: could not send the callbacks drain (%s)", job_id, exc)


def _run_through_redis_outages(self: Task, runner: Pipeline, job_id: str) -> str:
    """A Redis restart mid-job must not strand the job in `processing`: nothing can be written
    (not even `failed`) while Redis is away, so wait for it and run again; the stage markers
    make the rerun resume where the job was."""
    for _ in range(settings.redis_outage_reruns):
        try:
            return _run(self, runner, job_id)
        except RedisConnectionError as exc:
            log.warning("job %s: Redis unreachable (%s); waiting to resume", job_id, exc)
            runner.wait_for_state_store(timeout=settings.redis_outage_wait_seconds)
    return _run(self, runner, job_id)


def _run(self: Task, runner: Pipeline, job_id: str) -> str:
    try:
        return runner.run(job_id)
    except Refused as refused:
        # The job was cancelled, deleted or finished elsewhere while we worked: stop, clean up
        # after a cancellation (spool, stored object, any multipart upload; a deleted job's
        # run cleaned up already), write nothing more.
        log.info("job %s: stopped, state refused the write (%s)", job_id, refused.reason)
        runner.clean_up_if_cancelled(job_id)
        return refused.reason
    except PermanentError as error:
        log.warning("job %s: failed permanently: %s", job_id, error)
        return runner.fail(job_id, error, retryable=False)
    except TransientError as error:
        if self.request.retries < self.max_retries:
            delay = retry_delay(self.request.retries)
            attempt = self.request.retries + 1
            log.warning("job %s: %s; retry %d in %.1fs", job_id, error, attempt, delay)
            runner.note_retry(job_id, error, attempt=attempt, delay=delay)
            raise self.retry(countdown=delay, exc=error) from error
        return runner.fail(job_id, error, retryable=True)
    except SoftTimeLimitExceeded:
        return runner.fail(job_id, TIMEOUT, retryable=True)
    except Exception:
        log.exception("job %s: unexpected error", job_id)
        runner.fail(job_id, StageError("internal_error", "Unexpected worker error"), retryable=True)
        raise
