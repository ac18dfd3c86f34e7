"""Upload, result and live progress of audio analysis jobs. Thin: parse, call a
service, return; errors are mapped in api_errors."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse

from yousync.api.auth import issue_stream_token
from yousync.api.control import cancel_job, retry_job
from yousync.api.deletion import delete_job
from yousync.api.deps import (
    AppServices,
    EnqueueDep,
    JobsDep,
    RevokeDep,
    ServicesDep,
    SettingsDep,
    StagingDep,
    UploadSlotsDep,
)
from yousync.api.limits import TooManyStreams
from yousync.api.router.schemas import ERROR_RESPONSES, JobId, TokenId, UploadAccepted
from yousync.api.router.sse_response import CompactEventSourceResponse
from yousync.api.streaming.events import ShutdownSignal
from yousync.api.streaming.progress_stream import (
    AlreadyFinished,
    Feed,
    check_job_stream_start,
    check_token_stream_start,
    feed_events,
    jittered_ping,
)
from yousync.api.streaming.results import wait_for_snapshot
from yousync.api.uploads.staging import UploadStaging
from yousync.api.uploads.submission import Enqueue, submit_upload
from yousync.core.config import Settings
from yousync.core.jobs import AsyncJobStore
from yousync.core.models import JobSnapshot

router = APIRouter(prefix="/tokens", tags=["audio analysis"], responses=ERROR_RESPONSES)

ACCEPTED_MESSAGE = "업로드 완료, 분석이 백그라운드에서 진행됩니다."

_MULTIPART_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "callback_url": {
                            "type": "string",
                            "description": "This job's own callback target (allowlisted "
                            "hosts only); CALLBACK_URL otherwise",
                        },
                    },
                }
            }
        },
    }
}


def progress_path(job_id: str) -> str:
    return f"/tokens/analysis-progress/{job_id}"


def result_path(job_id: str) -> str:
    return f"/tokens/analysis-result/{job_id}"


@router.post(
    "/{token_id}/upload-audio",
    status_code=202,
    response_model=UploadAccepted,
    openapi_extra=_MULTIPART_BODY,
    summary="Upload a recording; answers 202 at once with the job id",
)
async def upload_audio(
    token_id: TokenId,
    request: Request,
    settings: SettingsDep,
    jobs: JobsDep,
    enqueue: EnqueueDep,
    slots: UploadSlotsDep,
    staging: StagingDep,
    idempotency_key: Annotated[
        str | None, Header(description="Same key within 24 h: the same job, not a new one")
    ] = None,
    callback_url: Annotated[
        str | None,
        Header(
            alias="Callback-URL",
            description="This job's own callback target (as the `callback_url` form field)",
        ),
    ] = None,
) -> JSONResponse:
    client = request.headers.get("authorization") or (request.client.host if request.client else "")
    with slots.hold(client):
        return await _upload(
            token_id, request, settings, jobs, staging, enqueue, idempotency_key, callback_url
        )


async def _upload(
    token_id: str,
    request: Request,
    settings: Settings,
    jobs: AsyncJobStore,
    staging: UploadStaging,
    enqueue: Enqueue,
    idempotency_key: str | None,
    callback_url: str | None,
) -> JSONResponse:
    accepted = await submit_upload(
        token_id=token_id,
        chunks=request.stream(),
        content_type=request.headers.get("content-type"),
        content_length=request.headers.get("content-length"),
        idempotency_key=idempotency_key,
        callback_header=callback_url,
        settings=settings,
        store=jobs,
        staging=staging,
        enqueue=enqueue,
    )
    body = UploadAccepted(
        job_id=accepted.job_id,
        task_id=accepted.task_id,
        status=accepted.status,
        message=ACCEPTED_MESSAGE,
        progress_url=progress_path(accepted.job_id),
        result_url=result_path(accepted.job_id),
        deduplicated=accepted.deduplicated,
        stream_token=issue_stream_token(
            settings.stream_secret, accepted.job_id, ttl_seconds=settings.stream_token_ttl_seconds
        )
        if settings.api_key_set
        else None,
    )
    headers = {"Location": body.result_url}
    if accepted.replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(body.model_dump(exclude_none=True), status_code=202, headers=headers)


def _event_stream(
    services: AppServices, feed: Feed, last: str | None
) -> CompactEventSourceResponse:
    settings = services.settings
    if services.hub.client_count >= settings.sse_max_clients:
        raise TooManyStreams()
    shutdown = ShutdownSignal()
    return CompactEventSourceResponse(
        feed_events(
            services.stream_reads,
            services.hub,
            feed,
            last_event_id=last,
            retry_ms=settings.sse_retry_ms,
            shutdown=shutdown,
        ),
        ping=jittered_ping(settings.sse_ping_seconds),
        send_timeout=settings.sse_send_timeout_seconds,
        shutdown_event=shutdown,  # type: ignore[arg-type]  # duck-typed: only .set() is called
        shutdown_grace_period=settings.sse_shutdown_grace_seconds,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def _job_stream(services: AppServices, job_id: str, last: str | None) -> Response:
    try:
        last = await check_job_stream_start(services.stream_reads, job_id, last)
    except AlreadyFinished:
        return Response(status_code=204)
    return _event_stream(services, Feed.for_job(job_id), last)


LastEventIdHeader = Annotated[
    str | None, Header(alias="Last-Event-ID", description="Sent by EventSource on reconnects")
]
LastEventIdQuery = Annotated[
    str | None, Query(max_length=64, description="Resume after this event id (first connect)")
]


@router.get(
    "/analysis-result/{job_id}",
    response_model=JobSnapshot,
    responses={200: {"content": {"text/event-stream": {}}}},
    summary="The job's current state; `?wait=N` holds until it is finished or N seconds pass; "
    "with `Accept: text/event-stream`, the live stream",
)
async def analysis_result(
    job_id: JobId,
    request: Request,
    services: ServicesDep,
    wait: Annotated[float, Query(ge=0, le=60, description="Long-poll up to N seconds")] = 0,
    last_event_id_header: LastEventIdHeader = None,
    last_event_id: LastEventIdQuery = None,
) -> Response | JobSnapshot:
    if "text/event-stream" in request.headers.get("accept", ""):
        return await _job_stream(services, job_id, last_event_id_header or last_event_id)
    return await wait_for_snapshot(services.jobs, services.hub, job_id, wait=wait)


@router.delete(
    "/analysis-result/{job_id}",
    status_code=204,
    response_class=Response,
    responses={
        204: {"description": "Deleted"},
        202: {
            "description": "Deleted; S3 was unavailable, its objects go by a retried sweep",
            "content": {"application/json": {}},
        },
    },
    summary="Delete the job: cancel it if running, remove its recording (unless a deduplicated "
    "job still answers with it), result, events and callbacks; open streams end with `deleted`",
)
async def delete_analysis(
    job_id: JobId, jobs: JobsDep, staging: StagingDep, revoke: RevokeDep
) -> Response:
    if await delete_job(store=jobs, staging=staging, job_id=job_id, revoke=revoke):
        return JSONResponse(
            {"job_id": job_id, "status": "deleted", "storage_cleanup": "pending"},
            status_code=202,
        )
    return Response(status_code=204)


@router.get(
    "/analysis-progress/{job_id}",
    response_class=CompactEventSourceResponse,
    responses={200: {"content": {"text/event-stream": {}}}, 204: {"description": "Finished"}},
    summary="Server-Sent Events: the job snapshot at every change, resumable by Last-Event-ID",
)
async def analysis_progress(
    job_id: JobId,
    services: ServicesDep,  # one dependency, not three: a storm pays for each per start
    last_event_id_header: LastEventIdHeader = None,
    last_event_id: LastEventIdQuery = None,
) -> Response:
    return await _job_stream(services, job_id, last_event_id_header or last_event_id)


@router.get(
    "/{token_id}/analysis-progress",
    response_class=CompactEventSourceResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
    summary="Server-Sent Events for every job of a token (new uploads appear as they come)",
)
async def token_progress(
    token_id: TokenId,
    services: ServicesDep,
    last_event_id_header: LastEventIdHeader = None,
    last_event_id: LastEventIdQuery = None,
) -> Response:
    last = await check_token_stream_start(last_event_id_header or last_event_id)
    return _event_stream(services, Feed.for_token(token_id), last)


@router.post(
    "/analysis-cancel/{job_id}",
    response_model=JobSnapshot,
    summary="Cancel a queued or running job (409 when it already finished)",
)
async def cancel_analysis(
    job_id: JobId, jobs: JobsDep, staging: StagingDep, revoke: RevokeDep
) -> JobSnapshot:
    return await cancel_job(store=jobs, staging=staging, job_id=job_id, revoke=revoke)


@router.post(
    "/analysis-retry/{job_id}",
    status_code=202,
    response_model=JobSnapshot,
    summary="Run a failed or cancelled job again from its first unfinished stage",
)
async def retry_analysis(
    job_id: JobId,
    jobs: JobsDep,
    settings: SettingsDep,
    staging: StagingDep,
    enqueue: EnqueueDep,
) -> JSONResponse:
    retried = await retry_job(
        store=jobs, settings=settings, staging=staging, job_id=job_id, enqueue=enqueue
    )
    return JSONResponse(
        retried.snapshot.model_dump(mode="json"),
        status_code=202,
        headers={"Location": result_path(job_id)},
    )
