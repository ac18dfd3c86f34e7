"""DELETE of a job: its recording, its result and every trace of it, on request.

Order, and why: claim, S3, then Redis — and once claimed, the DELETE always finishes. The claim
(the hash's `deleting` marker) stops every writer of the job and every new upload deduplicating
onto it; the objects go; then one script removes the record and all its keys and ends the
job's streams with the `deleted` event. S3 unavailable does not stop the Redis side: the prefixes
it could not clear go into a durable set (`keys.PENDING_DELETIONS`) that the Beat sweep
`retry_pending_deletions` works off once S3 answers again, and the answer is 202 (storage
clean-up pending) instead of 204. A DELETE that stopped at a failed S3 call would leave the
claim for good: a running job's worker stops at its next write and cleans up, and its record
would stay `processing`, refused every write, its streams never ending.

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
job's streams before the `deleted` event. The task is revoked so a queued one never starts.
Files a worker host spooled elsewhere go with the worker's clean-up or the spool sweep (their
record is gone).
"""

from __future__ import annotations

import logging
from pathlib import Path

import anyio

from yousync.api.control import Revoke
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


def _remove_or_defer(
    staging: UploadStaging, spool_dir: Path, job_id: str, prefixes: list[str]
) -> list[str]:
    """Removes the job's files; returns the prefixes S3 could not clear (down just then)."""
    unlink_job_files(spool_dir, f"{job_id}*")
    pending: list[str] = []
    for prefix in prefixes:
        try:
            removed = staging.store.delete_under(prefix)
        except TransientError as exc:
            log.warning("job %s: deleting %s deferred: %s", job_id, prefix, exc.message)
            pending.append(prefix)
            continue
        if removed:
            log.info("job %s: deleted %s", job_id, ", ".join(removed))
    return pending


async def delete_job(
    *, store: AsyncJobStore, staging: UploadStaging, job_id: str, revoke: Revoke
) -> bool:
    """Delete the job and everything of it. Returns False when done, True when S3 was
    unavailable and some objects wait for the `retry_pending_deletions` sweep (the job itself
    is gone either way). JobNotFound (404) when there is no such job (or another DELETE
    claimed it first)."""
    job = await store.get(job_id)
    if job is None:
        raise JobNotFound(job_id)
    try:
        holders = await store.claim_delete(job)
    except Refused as gone:
        raise JobNotFound(job_id) from gone
    prefixes = job_prefixes(job, holders=holders)
    spool_dir = staging.settings.spool_dir
    pending = await anyio.to_thread.run_sync(_remove_or_defer, staging, spool_dir, job_id, prefixes)
    # Recorded before the record goes: a crash in between leaves both, never neither.
    await store.defer_deletion(pending)
    await store.remove(job)
    if job.status.terminal:
        return bool(pending)
    if job.task_id:
        await anyio.to_thread.run_sync(revoke, job.task_id, abandon_on_cancel=True)
    # A worker that stored a part or an object while the first pass ran is stopped by its next
    # write and cleans up itself; this pass catches what it left if it was killed meanwhile.
    later = await anyio.to_thread.run_sync(_remove_or_defer, staging, spool_dir, job_id, prefixes)
    await store.defer_deletion(later)
    return bool(pending or later)
