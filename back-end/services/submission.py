"""Accepting an upload: spool it, record the job and its first event, enqueue the task by id.

Order matters for "nothing left behind": the body is fully validated before anything reaches
Redis; if the broker then refuses the task, the job record and spool file are removed again
and the client gets 503, so a job that exists is always a job that was enqueued.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import anyio
from redis.exceptions import RedisError

from config import Settings
from services.jobs import AsyncJobStore
from services.models import JobStatus
from services.uploads import SpooledUpload, receive_upload

log = logging.getLogger(__name__)

Enqueue = Callable[[str, str], None]


class ServiceUnavailable(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class Accepted:
    job_id: str
    task_id: str
    token_id: str
    status: JobStatus
    upload: SpooledUpload


async def submit_upload(
    *,
    token_id: str,
    chunks: AsyncIterator[bytes],
    content_type: str | None,
    content_length: str | None,
    settings: Settings,
    store: AsyncJobStore,
    enqueue: Enqueue,
) -> Accepted:
    job_id = str(uuid.uuid4())
    task_id = str(uuid.uuid4())
    await anyio.to_thread.run_sync(lambda: settings.spool_dir.mkdir(parents=True, exist_ok=True))
    upload = await receive_upload(
        chunks,
        content_type=content_type,
        content_length=content_length,
        spool_path=settings.spool_dir / job_id,
        max_bytes=settings.max_upload_bytes,
    )
    try:
        await store.create(
            job_id,
            token_id,
            task_id=task_id,
            spool_path=str(upload.path),
            sha256=upload.sha256,
            size_bytes=upload.size,
            source_format=upload.audio_format,
            filename=upload.filename,
        )
    except RedisError as exc:
        upload.path.unlink(missing_ok=True)
        raise ServiceUnavailable("redis_unavailable", "Job state store is unavailable") from exc
    try:
        with anyio.fail_after(settings.enqueue_timeout_seconds * 3):
            await anyio.to_thread.run_sync(enqueue, job_id, task_id, abandon_on_cancel=True)
    except Exception as exc:
        log.warning("job %s: enqueue failed (%r); rolling back", job_id, exc)
        with contextlib.suppress(RedisError):
            await store.delete(job_id, token_id)
        upload.path.unlink(missing_ok=True)
        raise ServiceUnavailable("broker_unavailable", "Task queue is unavailable") from exc
    return Accepted(
        job_id=job_id, task_id=task_id, token_id=token_id, status=JobStatus.QUEUED, upload=upload
    )
