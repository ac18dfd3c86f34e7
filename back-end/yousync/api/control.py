"""Cancel and retry: state changes users ask for, decided by the same atomic script as progress.

Cancellation is cooperative: the job is marked `cancelled` first (atomically refusing a job that
already finished), then the Celery task is revoked so a queued task never starts. A running
task notices at its next write — a stage boundary or a byte callback — because the script
refuses writes to a terminal job; the worker then aborts its multipart upload and cleans up.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

import anyio

from yousync.api.streaming.progress_stream import JobNotFound
from yousync.api.uploads.staging import UploadStaging
from yousync.api.uploads.submission import Enqueue, ServiceUnavailable
from yousync.core.config import Settings
from yousync.core.errors import TransientError
from yousync.core.jobs import AsyncJobStore, Refused
from yousync.core.models import JobSnapshot, JobStatus
from yousync.core.record import JobRecord
from yousync.core.stages import Stage

Revoke = Callable[[str], None]


class JobConflict(Exception):
    """The job's state does not allow the request (409)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class Retried:
    snapshot: JobSnapshot
    task_id: str


async def _job(store: AsyncJobStore, job_id: str) -> JobRecord:
    job = await store.get(job_id)
    if job is None:
        raise JobNotFound(job_id)
    return job


async def cancel_job(
    *, store: AsyncJobStore, staging: UploadStaging, job_id: str, revoke: Revoke
) -> JobSnapshot:
    job = await _job(store, job_id)
    was_queued = job.status == JobStatus.QUEUED
    try:
        await store.update(
            job_id,
            job.token_id,
            status=JobStatus.CANCELLED,
            message="Cancelled on request",
            eta_seconds=None,
        )
    except Refused as refused:
        raise JobConflict("job_finished", f"The job is already {job.status.value}") from refused
    if job.task_id:
        await anyio.to_thread.run_sync(revoke, job.task_id, abandon_on_cancel=True)
    if was_queued:
        # No worker holds the upload yet; a running job's worker deletes it itself.
        await anyio.to_thread.run_sync(staging.discard_upload, job)
    return (await _job(store, job_id)).snapshot


async def retry_job(
    *,
    store: AsyncJobStore,
    settings: Settings,
    staging: UploadStaging,
    job_id: str,
    enqueue: Enqueue,
) -> Retried:
    """Run a failed or cancelled job again from its first unfinished stage; progress goes on
    from where it stopped (the script refuses to lower it)."""
    job = await _job(store, job_id)
    if job.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
        raise JobConflict(
            "not_retryable",
            f"Only failed or cancelled jobs can be retried, not {job.status.value}",
        )
    if not job.s3_key and not await _upload_exists(staging, job):
        raise JobConflict("upload_gone", "The uploaded audio is no longer available; upload again")
    task_id = str(uuid.uuid4())
    try:
        await store.reopen(
            job_id,
            job.token_id,
            status=JobStatus.QUEUED,
            stage=Stage.QUEUED,
            message="Retry requested; waiting for a worker",
            error=None,
            task_id=task_id,
            deliveries=0,
        )
    except Refused as refused:
        raise JobConflict("not_retryable", "The job changed meanwhile") from refused
    try:
        with anyio.fail_after(settings.enqueue_timeout_seconds * 3):
            await anyio.to_thread.run_sync(enqueue, job_id, task_id, abandon_on_cancel=True)
    except Exception as exc:
        error = {
            "code": "broker_unavailable",
            "message": "Task queue unavailable",
            "retryable": True,
        }
        await store.update(job_id, job.token_id, status=JobStatus.FAILED, error=error)
        raise ServiceUnavailable("broker_unavailable", "Task queue is unavailable") from exc
    return Retried(snapshot=(await _job(store, job_id)).snapshot, task_id=task_id)


async def _upload_exists(staging: UploadStaging, job: JobRecord) -> bool:
    try:
        return await anyio.to_thread.run_sync(staging.upload_exists, job)
    except TransientError as exc:
        raise ServiceUnavailable("storage_unavailable", "Upload storage is unavailable") from exc
