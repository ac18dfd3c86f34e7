"""Celery Beat's maintenance sweeps (schedule: `beat_schedule` in celery_app.py; queue
`maintenance`). Each is safe to run any number of times, on any worker, concurrently.

* `sweep_spool` — deletes spool files nothing can need any more: those of completed and of
  cancelled jobs (the cancel deleted them; these are leftovers), and of jobs whose record is gone
  (expired, deleted) once the file is older than SPOOL_ORPHAN_GRACE_SECONDS — the API writes the
  file *before* it creates the job record, so a young file without a record is an upload still
  arriving. A failed job's input lives exactly as long as its record (RESULT_RETENTION_SECONDS
  after it ended, or for good while its callback is dead-lettered), so a retry works until then.
* `mark_stuck_jobs` — a `processing` job with no write for longer than the hard time limit plus
  the longest retry backoff has lost its task (a SIGKILLed child after the time limit, a worker
  host gone): it ends `failed` with code `stuck` (retryable). A `queued` job untouched for
  STUCK_QUEUED_SECONDS lost its message. The set of active jobs scored by their last write
  (`keys.ACTIVE_JOBS`, kept by the job-state script) makes this one range query.
* `sweep_staged_uploads` — the same rules for uploads staged in S3 (`incoming/<job_id>`,
  UPLOAD_STAGING=s3), by the object's age; and aborts staging multipart uploads whose last part
  is older than SPOOL_ORPHAN_GRACE_SECONDS — an upload still arriving keeps sending parts, one
  whose API process died stopped. Needed when a worker or an API could not delete an object
  itself (S3 unavailable just then, a process killed).
* `abort_stale_multipart_uploads` — S3 bills the parts of unfinished multipart uploads; abort
  ours (`audio/` prefix) that started more than MULTIPART_MAX_AGE_SECONDS (a day) ago.
* `retry_pending_deletions` — the S3 side of DELETEs that S3 did not let finish (api/
  deletion.py answered 202): deletes under each prefix of `keys.PENDING_DELETIONS` and drops it
  once S3 confirmed.
* `sweep_old_audio` — deletes prepared audio (`audio/` prefix) stored more than
  AUDIO_RETENTION_DAYS ago; 0 (the default) keeps it for good. A finished job keeps its result
  and `s3_url`; the URL then names an object that is gone.

Every argument is optional and defaults to the settings; tests pass small ages.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import redis

from yousync.core import keys
from yousync.core.errors import TransientError
from yousync.core.jobs import JobStore, Refused, UnreadableRecord
from yousync.core.models import JobStatus
from yousync.core.storage import OBJECT_PREFIX, STAGING_PREFIX, MultipartUpload, Storage
from yousync.observability.logging_setup import JOB_ID_PATTERN
from yousync.worker import context
from yousync.worker.celery_app import MAINTENANCE_QUEUE, celery_app, settings

log = logging.getLogger("yousync.maintenance")


def _redis_now(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return float(seconds) + float(micros) / 1e6


def stuck_processing_seconds() -> float:
    """The hard time limit, plus the longest backoff a retrying job may wait between writes."""
    longest_backoff = settings.task_retry_delay * 2.0 ** max(settings.task_max_retries - 1, 0) * 1.2
    return settings.task_time_limit + longest_backoff


@dataclass(frozen=True)
class UploadAges:
    """How long a job's upload without a record is kept after its newest write (seconds): an
    upload still arriving has no record yet."""

    orphan_grace: float

    @classmethod
    def of(cls, orphan_grace: float | None) -> UploadAges:
        return cls(
            orphan_grace=settings.spool_orphan_grace_seconds
            if orphan_grace is None
            else float(orphan_grace)
        )


def _not_needed(
    store: JobStore, job_id: str, *, written_at: float, now: float, ages: UploadAges, what: str
) -> str | None:
    """Why nothing can need the upload of `job_id` any more (the log's `reason`), or None. A
    record we cannot read (a newer release's) might still need it: kept, and `what` logged."""
    try:
        job = store.get(job_id)
    except UnreadableRecord as exc:
        log.warning("job %s: record unreadable, %s kept: %s", job_id, what, exc)
        return None
    if job is None:
        return "expired" if now - written_at >= ages.orphan_grace else None
    if job.status in (JobStatus.COMPLETED, JobStatus.CANCELLED):
        return job.status.value
    # Failed: kept for a retry while the record lives. Queued, processing: still needed.
    return None


@celery_app.task(name="tasks.maintenance.sweep_spool", queue=MAINTENANCE_QUEUE)
def sweep_spool(orphan_grace_seconds: float | None = None) -> dict[str, Any]:
    ages = UploadAges.of(orphan_grace_seconds)
    spool_dir = Path(settings.spool_dir)
    if not spool_dir.is_dir():
        return {"deleted": [], "kept": 0}
    by_job: dict[str, list[Path]] = {}
    for path in spool_dir.iterdir():
        found = JOB_ID_PATTERN.match(path.name)
        if found and path.is_file():
            by_job.setdefault(found.group(0), []).append(path)
    store = context.get().store
    now = time.time()
    deleted: list[str] = []
    kept = 0
    for job_id, paths in by_job.items():
        newest = max((_mtime(path) for path in paths), default=now)
        why = _not_needed(store, job_id, written_at=newest, now=now, ages=ages, what="spool files")
        if why is None:
            kept += len(paths)
            continue
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                deleted.append(path.name)
        log.info(
            "spool files deleted", extra={"job_id": job_id, "reason": why, "files": len(paths)}
        )
    return {"deleted": sorted(deleted), "kept": kept}


@celery_app.task(name="tasks.maintenance.sweep_staged_uploads", queue=MAINTENANCE_QUEUE)
def sweep_staged_uploads(orphan_grace_seconds: float | None = None) -> dict[str, Any]:
    ages = UploadAges.of(orphan_grace_seconds)
    ctx = context.get()
    storage, store = ctx.storage, ctx.store
    now = time.time()
    deleted: list[str] = []
    kept = 0
    for staged in storage.objects(STAGING_PREFIX):
        job_id = staged.key.removeprefix(STAGING_PREFIX)
        if not JOB_ID_PATTERN.fullmatch(job_id):
            kept += 1  # not ours: never delete what this service did not name
            continue
        written_at = staged.last_modified.timestamp()
        why = _not_needed(
            store, job_id, written_at=written_at, now=now, ages=ages, what="staged upload"
        )
        if why is None:
            kept += 1
            continue
        storage.delete(staged.key)
        deleted.append(staged.key)
        log.info("staged upload deleted", extra={"job_id": job_id, "reason": why})
    # By their last part: an upload still arriving keeps sending parts.
    aborted, still_arriving = _abort_multipart_uploads(
        storage,
        STAGING_PREFIX,
        since=storage.last_part_at,
        cutoff=datetime.fromtimestamp(now - ages.orphan_grace, UTC),
    )
    return {"deleted": sorted(deleted), "aborted": aborted, "kept": kept + still_arriving}


def _abort_multipart_uploads(
    storage: Storage,
    prefix: str,
    *,
    since: Callable[[MultipartUpload], datetime],
    cutoff: datetime,
) -> tuple[list[str], int]:
    """Abort the multipart uploads under `prefix` whose `since` (their start, their last part)
    is before `cutoff`; returns the keys aborted and how many were kept."""
    aborted: list[str] = []
    kept = 0
    for upload in storage.multipart_uploads(prefix):
        at = since(upload)
        if at > cutoff:
            kept += 1
            continue
        storage.abort_multipart_upload(upload.key, upload.upload_id)
        aborted.append(upload.key)
        log.info("multipart upload aborted", extra={"key": upload.key, "since": at.isoformat()})
    return aborted, kept


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


@celery_app.task(name="tasks.maintenance.mark_stuck_jobs", queue=MAINTENANCE_QUEUE)
def mark_stuck_jobs(
    processing_seconds: float | None = None, queued_seconds: float | None = None
) -> list[str]:
    limits = {
        JobStatus.PROCESSING: (
            stuck_processing_seconds() if processing_seconds is None else float(processing_seconds)
        ),
        JobStatus.QUEUED: (
            settings.stuck_queued_seconds if queued_seconds is None else float(queued_seconds)
        ),
    }
    ctx = context.get()
    client, store = ctx.redis, ctx.store
    now = _redis_now(client)
    cutoff = now - min(limits.values())
    marked: list[str] = []
    due = cast(
        "list[tuple[str, float]]",
        client.zrangebyscore(keys.ACTIVE_JOBS, "-inf", cutoff, withscores=True),
    )
    for job_id, last_write in due:
        try:
            job = store.get(job_id)
        except UnreadableRecord as exc:
            log.warning("job %s: record unreadable, not checked for stuck: %s", job_id, exc)
            continue
        if job is None:
            client.zrem(keys.ACTIVE_JOBS, job_id)
            continue
        limit = limits.get(job.status)
        if limit is None or now - last_write < limit:
            continue
        minutes = (now - last_write) / 60
        message = f"The job made no progress for {minutes:.0f} min and was stopped"
        try:
            store.update(
                job_id,
                job.token_id,
                status=JobStatus.FAILED,
                message=message,
                error={"code": "stuck", "message": message, "retryable": True},
                eta_seconds=None,
            )
        except Refused:
            continue  # finished (or was cancelled) meanwhile
        marked.append(job_id)
        log.warning(
            "job marked stuck",
            extra={
                "job_id": job_id,
                "was": job.status.value,
                "idle_seconds": round(now - last_write),
            },
        )
    return marked


@celery_app.task(name="tasks.maintenance.abort_stale_multipart_uploads", queue=MAINTENANCE_QUEUE)
def abort_stale_multipart_uploads(older_than_seconds: float | None = None) -> dict[str, Any]:
    max_age = (
        settings.multipart_max_age_seconds if older_than_seconds is None else older_than_seconds
    )
    cutoff = datetime.now(UTC) - timedelta(seconds=float(max_age))
    aborted, kept = _abort_multipart_uploads(
        context.get().storage, OBJECT_PREFIX, since=lambda upload: upload.initiated, cutoff=cutoff
    )
    return {"aborted": aborted, "kept": kept}


@celery_app.task(name="tasks.maintenance.sweep_old_audio", queue=MAINTENANCE_QUEUE)
def sweep_old_audio(older_than_days: float | None = None) -> dict[str, Any]:
    days = settings.audio_retention_days if older_than_days is None else float(older_than_days)
    if days <= 0:
        return {"deleted": [], "kept": 0}  # 0: kept for good, not even listed
    storage = context.get().storage
    cutoff = datetime.now(UTC) - timedelta(days=days)
    deleted: list[str] = []
    kept = 0
    for stored in storage.objects(OBJECT_PREFIX):
        if stored.last_modified > cutoff:
            kept += 1
            continue
        storage.delete(stored.key)
        deleted.append(stored.key)
        log.info(
            "stored audio deleted (retention)",
            extra={"key": stored.key, "stored_at": stored.last_modified.isoformat()},
        )
    return {"deleted": sorted(deleted), "kept": kept}


@celery_app.task(name="tasks.maintenance.retry_pending_deletions", queue=MAINTENANCE_QUEUE)
def retry_pending_deletions() -> dict[str, Any]:
    """Deletes under each prefix a DELETE left for later (S3 unavailable then); a prefix is
    dropped from the set only once S3 confirmed, so an outage just leaves it for the next run.
    SREM of the exact member: a DELETE adding the same prefix again meanwhile is harmless (its
    objects are deleted all the same)."""
    ctx = context.get()
    deleted: list[str] = []
    pending = sorted(str(prefix) for prefix in ctx.redis.smembers(keys.PENDING_DELETIONS))
    for prefix in pending:
        try:
            deleted += ctx.storage.delete_under(prefix)
        except TransientError as exc:
            log.warning("pending deletion %s kept: %s", prefix, exc.message)
            continue
        ctx.redis.srem(keys.PENDING_DELETIONS, prefix)
    left = ctx.redis.scard(keys.PENDING_DELETIONS)
    return {"deleted": sorted(deleted), "pending": int(left)}
