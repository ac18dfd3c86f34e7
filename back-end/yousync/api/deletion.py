"""DELETE of a job: its recording, its result and every trace of it, on request.

Order, and why: S3 first, Redis last. The record is what tells us (and a user repeating the
request) what there is to delete, so it goes only once the objects are gone: S3 unavailable
answers 503 `storage_unavailable` and leaves the record in place for the repeat. The one thing
the failed attempt leaves in Redis is the hash's `deleting` marker (the claim): no new upload
deduplicates onto an object that is about to go, and no writer may change the job any more.

What belongs to the job: its prepared audio `audio/<token>/<job>.<ext>` and any unfinished
multipart upload of it, its staged input `incoming/<job>`, its spool files on this host, and in
Redis its hash, events, token index and token-stream entries, dedupe entry, dedups set and
callback deliveries (core/job_delete.lua). Deduplicated jobs share the original job's (the
root's) object: the root's dedups set names them, and the claim counts those still alive. The
object goes with the last live job holding it — the root keeps it while a deduplicated job
lives, and deleting that job deletes the object once the root is gone.

A running job: from the claim on, every write of its worker is `Refused` ('missing', as if the
record were gone; job_write.lua); the worker then deletes what it stored meanwhile
(worker/pipeline.py), and no `failed` of a worker whose input vanished under it can end the
job's streams before the `deleted` event. The task
is revoked so a queued one never starts. Files a worker host spooled elsewhere go with the
worker's clean-up or the spool sweep (their record is gone).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import anyio

from yousync.api.control import Revoke
from yousync.api.errors import ApiError
from yousync.api.streaming.progress_stream import JobNotFound
from yousync.api.uploads.staging import UploadStaging
from yousync.core.errors import TransientError
from yousync.core.jobs import AsyncJobStore, Refused
from yousync.core.record import JobRecord
from yousync.core.storage import OBJECT_PREFIX, staged_key, unlink_job_files

log = logging.getLogger(__name__)


def audio_prefix(token_id: str, job_id: str) -> str:
    """Every prepared object of the job, whatever its extension (storage.object_key)."""
    return f"{OBJECT_PREFIX}{token_id}/{job_id}."


def job_prefixes(job: JobRecord, *, holders: int) -> list[str]:
    """The S3 prefixes to clear for `job`, given how many other live jobs hold its object."""
    prefixes = [staged_key(job.job_id)]
    root = job.deduplicated_from or job.job_id
    if root != job.job_id:
        # Nothing stored under its own id but a stray staged upload; the root's object is its.
        prefixes.append(audio_prefix(job.token_id, job.job_id))
    if holders == 0:
        prefixes.append(audio_prefix(job.token_id, root))
    return prefixes


def _remove_files(
    staging: UploadStaging, spool_dir: Path, job_id: str, prefixes: list[str]
) -> None:
    unlink_job_files(spool_dir, f"{job_id}*")
    for prefix in prefixes:
        removed = staging.store.delete_under(prefix)
        if removed:
            log.info("job %s: deleted %s", job_id, ", ".join(removed))


async def delete_job(
    *, store: AsyncJobStore, staging: UploadStaging, job_id: str, revoke: Revoke
) -> None:
    """Delete the job and everything of it; JobNotFound (404) when there is no such job (or
    another DELETE removed it first), ApiError 503 `storage_unavailable` when S3 is unavailable."""
    job = await store.get(job_id)
    if job is None:
        raise JobNotFound(job_id)
    try:
        holders = await store.claim_delete(job)
    except Refused as gone:
        raise JobNotFound(job_id) from gone
    prefixes = job_prefixes(job, holders=holders)
    spool_dir = staging.settings.spool_dir
    try:
        await anyio.to_thread.run_sync(_remove_files, staging, spool_dir, job_id, prefixes)
    except TransientError as exc:
        # Not the upload path's ServiceUnavailable: that one counts as a rejected upload.
        raise ApiError(
            503,
            "storage_unavailable",
            "Object storage is unavailable; the job is kept: repeat the request",
            {"Retry-After": "5"},
        ) from exc
    try:
        await store.remove(job)
    except Refused as gone:
        raise JobNotFound(job_id) from gone
    if job.status.terminal:
        return
    if job.task_id:
        await anyio.to_thread.run_sync(revoke, job.task_id, abandon_on_cancel=True)
    # A worker that stored a part or an object while the first pass ran is stopped by its next
    # write and cleans up itself; this pass catches what it left if it was killed meanwhile.
    with contextlib.suppress(TransientError):
        await anyio.to_thread.run_sync(_remove_files, staging, spool_dir, job_id, prefixes)
