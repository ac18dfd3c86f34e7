"""Accepting an upload: stage it, record the job and its first event, enqueue the task by id.

Order matters for "nothing left behind": the body is fully validated before anything reaches
Redis; if the broker then refuses the task, the job record and the staged upload (spool file or
S3 object) are removed again and the client gets 503, so a job that exists is always a job that
was enqueued.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

import anyio
from redis.exceptions import RedisError

from yousync.api.uploads.receive import ReceivedUpload, UploadRejected, receive_upload
from yousync.api.uploads.staging import UploadStaging
from yousync.core.callback_target import (
    REFUSED_CODE,
    CallbackTargetRefused,
    check_requested,
    resolve_for_send,
)
from yousync.core.config import Settings
from yousync.core.errors import TransientError
from yousync.core.jobs import AsyncJobStore, Refused
from yousync.core.models import JobStatus
from yousync.core.record import JobRecord
from yousync.core.stages import Stage
from yousync.observability import metrics

log = logging.getLogger(__name__)

Enqueue = Callable[[str, str], None]


class ServiceUnavailable(Exception):
    """503 with Retry-After. `body_unread`: the request's body may be only partly read, so the
    connection is closed rather than drained."""

    def __init__(self, code: str, detail: str, *, body_unread: bool = False) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.body_unread = body_unread


@dataclass(frozen=True)
class Accepted:
    job_id: str
    task_id: str
    token_id: str
    status: JobStatus
    deduplicated: bool = False
    replayed: bool = False  # answered from an earlier request with the same Idempotency-Key


_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,128}$")
# The form field naming the upload's own callback target (also the `Callback-URL` header).
CALLBACK_FIELD = "callback_url"
# A callback host's name must resolve within this long at upload.
CALLBACK_RESOLVE_SECONDS = 5.0


async def checked_callback_url(url: str, settings: Settings) -> str:
    """An upload's own callback target, refused with 422 `callback_url_not_allowed` unless its
    host is allowlisted and resolves only to addresses we may send to (core/callback_target.py).
    The resolution runs in a thread (DNS blocks), bounded, so a slow resolver cannot hold the
    request."""
    try:
        checked = check_requested(url, settings)
        with anyio.fail_after(CALLBACK_RESOLVE_SECONDS):
            await anyio.to_thread.run_sync(
                functools.partial(resolve_for_send, checked, settings, operator_set=False),
                abandon_on_cancel=True,
            )
    except CallbackTargetRefused as exc:
        raise UploadRejected(422, REFUSED_CODE, str(exc)) from None
    except TimeoutError:
        raise UploadRejected(422, REFUSED_CODE, "callback_url's host did not resolve") from None
    return checked


class _CallbackChoice:
    """The upload's callback target, from the header (checked before the body is read) or the
    form field (checked before the upload is committed, wherever the field came)."""

    def __init__(self, header: str | None, settings: Settings) -> None:
        self.header = header or None
        self.settings = settings
        self.url: str | None = None

    async def check_header(self) -> None:
        if self.header is not None:
            self.url = await checked_callback_url(self.header, self.settings)

    async def check_fields(self, fields: Mapping[str, str]) -> None:
        field = fields.get(CALLBACK_FIELD) or None
        if field is None:
            return
        if self.header is not None and field != self.header:
            raise UploadRejected(
                422, REFUSED_CODE, "Callback-URL header and callback_url field differ"
            )
        self.url = await checked_callback_url(field, self.settings)

    def markers(self) -> dict[str, str]:
        return {CALLBACK_FIELD: self.url} if self.url else {}


def _accepted_from(job: JobRecord, *, replayed: bool = False) -> Accepted:
    return Accepted(
        job_id=job.job_id,
        task_id=job.task_id or "",
        token_id=job.token_id,
        status=job.status,
        deduplicated=job.snapshot.deduplicated,
        replayed=replayed,
    )


async def submit_upload(
    *,
    token_id: str,
    chunks: AsyncIterator[bytes],
    content_type: str | None,
    content_length: str | None,
    idempotency_key: str | None = None,
    callback_header: str | None = None,
    settings: Settings,
    store: AsyncJobStore,
    staging: UploadStaging,
    enqueue: Enqueue,
) -> Accepted:
    """`callback_header`: the `Callback-URL` header, if any (the form's `callback_url` field
    says the same; at most one value)."""
    job_id = str(uuid.uuid4())
    if idempotency_key is not None and not _IDEMPOTENCY_KEY.match(idempotency_key):
        raise UploadRejected(
            422, "invalid_idempotency_key", "Idempotency-Key: 1–128 visible ASCII characters"
        )
    callback = _CallbackChoice(callback_header, settings)
    await callback.check_header()
    if idempotency_key is not None:
        earlier = await _claim(store, token_id, idempotency_key, job_id)
        if earlier is not None:
            return earlier
    try:
        accepted = await _submit(
            job_id=job_id,
            token_id=token_id,
            chunks=chunks,
            content_type=content_type,
            content_length=content_length,
            callback=callback,
            settings=settings,
            store=store,
            staging=staging,
            enqueue=enqueue,
        )
    except BaseException:
        if idempotency_key is not None:
            with contextlib.suppress(RedisError):
                await store.settle_idempotency(token_id, idempotency_key, None)
        raise
    if idempotency_key is not None:
        await store.settle_idempotency(token_id, idempotency_key, accepted.job_id)
    return accepted


async def _claim(store: AsyncJobStore, token_id: str, key: str, job_id: str) -> Accepted | None:
    """None when this request owns the key; the earlier job's answer when it exists."""
    try:
        for _ in range(2):
            earlier = await store.claim_idempotency(token_id, key, job_id)
            if earlier is None:
                return None
            if earlier.startswith("pending:"):
                raise UploadRejected(
                    409, "request_in_progress", "A request with this Idempotency-Key is running"
                )
            job = await store.get(earlier)
            if job is not None:
                return _accepted_from(job, replayed=True)
            # The earlier job expired: the key is free again.
            await store.settle_idempotency(token_id, key, None)
    except RedisError as exc:
        raise ServiceUnavailable("redis_unavailable", "Job state store is unavailable") from exc
    raise UploadRejected(409, "request_in_progress", "The Idempotency-Key is contended")


async def _submit(
    *,
    job_id: str,
    token_id: str,
    chunks: AsyncIterator[bytes],
    content_type: str | None,
    content_length: str | None,
    callback: _CallbackChoice,
    settings: Settings,
    store: AsyncJobStore,
    staging: UploadStaging,
    enqueue: Enqueue,
) -> Accepted:
    task_id = str(uuid.uuid4())
    sink = await anyio.to_thread.run_sync(staging.sink, job_id)
    try:
        upload = await receive_upload(
            chunks,
            content_type=content_type,
            content_length=content_length,
            sink=sink,
            max_bytes=settings.max_upload_bytes,
            max_seconds=settings.max_audio_duration_seconds,
            fields=(CALLBACK_FIELD,),
            check=callback.check_fields,
        )
    except TransientError as exc:
        log.warning("job %s: staging the upload failed: %s", job_id, exc.message)
        raise ServiceUnavailable(
            "storage_unavailable", "Upload storage is unavailable", body_unread=True
        ) from exc
    try:
        earlier = await store.deduplicate(token_id, upload.sha256)
        if earlier is not None and await _create_deduplicated(
            store, job_id, token_id, earlier, upload, callback
        ):
            await _remove(upload)
            metrics.upload_accepted(upload.size)
            return Accepted(
                job_id=job_id,
                task_id="",
                token_id=token_id,
                status=JobStatus.COMPLETED,
                deduplicated=True,
            )
        await store.create(
            job_id,
            token_id,
            task_id=task_id,
            **upload.sink.markers(),
            sha256=upload.sha256,
            size_bytes=upload.size,
            source_format=upload.audio_format,
            filename=upload.filename,
            **callback.markers(),
        )
    except RedisError as exc:
        await _remove(upload)
        raise ServiceUnavailable("redis_unavailable", "Job state store is unavailable") from exc
    try:
        with anyio.fail_after(settings.enqueue_timeout_seconds * 3):
            await anyio.to_thread.run_sync(enqueue, job_id, task_id, abandon_on_cancel=True)
    except Exception as exc:
        log.warning("job %s: enqueue failed (%r); rolling back", job_id, exc)
        with contextlib.suppress(RedisError):
            await store.delete(job_id, token_id)
        await _remove(upload)
        raise ServiceUnavailable("broker_unavailable", "Task queue is unavailable") from exc
    metrics.upload_accepted(upload.size)
    return Accepted(job_id=job_id, task_id=task_id, token_id=token_id, status=JobStatus.QUEUED)


async def _create_deduplicated(
    store: AsyncJobStore,
    job_id: str,
    token_id: str,
    earlier: JobRecord,
    upload: ReceivedUpload,
    callback: _CallbackChoice,
) -> bool:
    """The same recording was analysed for this token within the window: the new job is created
    already completed with the earlier one's result. The creation and joining the earlier job's
    holders of its stored object are one script (a DELETE of the earlier job keeps an object a
    live job holds); False when that job is no longer completed or being deleted, then the
    upload is analysed as a new job."""
    try:
        await store.create(
            job_id,
            token_id,
            status=JobStatus.COMPLETED,
            progress=Stage.DONE.start,
            stage=Stage.DONE,
            message="Identical upload already analysed",
            result=earlier.snapshot.result,
            s3_url=earlier.snapshot.s3_url,
            deduplicated=True,
            sha256=upload.sha256,
            size_bytes=upload.size,
            deduplicated_from=earlier.job_id,
            **callback.markers(),
        )
    except Refused as refused:
        if refused.reason != "original_gone":
            raise
        return False
    return True


async def _remove(upload: ReceivedUpload) -> None:
    """Shielded: once the upload is refused or answered otherwise, nothing of it may stay."""
    with anyio.CancelScope(shield=True):
        await anyio.to_thread.run_sync(upload.sink.discard)
