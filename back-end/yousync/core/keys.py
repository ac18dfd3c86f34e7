"""Every Redis key and channel the product uses, in one place."""

from __future__ import annotations

PREFIX = "yousync"

# One pub/sub channel for every job event; each API process holds one subscription to it.
EVENTS_CHANNEL = f"{PREFIX}:events"


def job(job_id: str) -> str:
    """Hash: the job snapshot fields plus internal stage markers."""
    return f"{PREFIX}:job:{job_id}"


def job_events(job_id: str) -> str:
    """Stream: one entry per event; entry ids are the SSE event ids."""
    return f"{PREFIX}:job:{job_id}:events"


def token_jobs(token_id: str) -> str:
    """Sorted set of a token's job ids by creation time (multi-job dashboard)."""
    return f"{PREFIX}:token:{token_id}:jobs"


def token_events(token_id: str) -> str:
    """Stream of every event of the token's jobs, in one order (the multi-job SSE stream)."""
    return f"{PREFIX}:token:{token_id}:events"


# Sorted set: running jobs scored by their last write time (stall detection).
ACTIVE_JOBS = f"{PREFIX}:active"


# Hash: recent mean duration of each stage by upload size bucket (ETA of stages not started).
STAGE_STATS = f"{PREFIX}:stats:stage_seconds"


def idempotency(token_id: str, key: str) -> str:
    """Job id answered for an `Idempotency-Key` (24 h), or `pending:<job id>` while in flight."""
    return f"{PREFIX}:idem:{token_id}:{key}"


def dedupe(token_id: str, sha256: str) -> str:
    """Job id of a completed identical upload for the token."""
    return f"{PREFIX}:dedupe:{token_id}:{sha256}"


def job_dedups(job_id: str) -> str:
    """Set: ids of the deduplicated jobs answered with this job's stored object (they share
    its `s3_key`). DELETE keeps the object while one of them lives; expired members are
    skipped when read, and the set expires with the newest of them."""
    return f"{PREFIX}:job:{job_id}:dedups"


# Set: S3 prefixes of deleted jobs whose objects S3 could not delete at the DELETE (down just
# then). No TTL: the `retry_pending_deletions` sweep (worker/tasks/maintenance.py) deletes under
# each until S3 confirms, then drops it.
PENDING_DELETIONS = f"{PREFIX}:deletions:pending"


# Cluster-wide metrics, read by every API's /metrics (observability/metrics.py).
# Hash: final status -> number of jobs that reached it (HINCRBY in the job-state Lua script).
METRICS_JOBS_FINISHED = f"{PREFIX}:metrics:jobs_finished"
# Hash: `{stage}|count`, `{stage}|sum`, `{stage}|le|{bound}` -> a histogram of stage durations.
METRICS_STAGE_SECONDS = f"{PREFIX}:metrics:stage_seconds"
# Hash: callback outcome -> count (`delivered`, `attempt_failed`, `dead_lettered`), kept by the
# delivery scripts (yousync/core/callbacks.py).
METRICS_CALLBACKS = f"{PREFIX}:metrics:callbacks"


def queue_workers(queue: str) -> str:
    """Sorted set in the *broker's* Redis: hostnames of the workers consuming `queue`, scored by
    the time their heartbeat entry expires (yousync/observability/broker_queues.py)."""
    return f"{PREFIX}:workers:{queue}"


# String: the token of the one Beat allowed to send (host:pid:uuid), with a TTL it renews
# (yousync/worker/beat_scheduler.py).
BEAT_LOCK = f"{PREFIX}:beat:lock"


# Completion callbacks (Standard Webhooks) to the main back end. One delivery per job end; its
# id is the `webhook-id`. Sorted set: delivery ids scored by when their next attempt is due.
CALLBACKS_DUE = f"{PREFIX}:callbacks:due"
# Sorted set: dead-lettered delivery ids scored by when they gave up; never expires.
CALLBACKS_DEAD = f"{PREFIX}:callbacks:dead"


def callback(delivery_id: str) -> str:
    """Hash: one delivery (job_id, url, body, attempts, timestamps, last error)."""
    return f"{PREFIX}:callback:{delivery_id}"


def job_callbacks(job_id: str) -> str:
    """Set: the delivery ids of a job's ends (a retried job ends again), for deleting a job."""
    return f"{PREFIX}:job:{job_id}:callbacks"
