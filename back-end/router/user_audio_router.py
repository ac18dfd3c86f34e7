"""Upload, result and live progress of audio analysis jobs (DESIGN §3). Thin: parse, call a
service, return; errors are mapped in api_errors."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse

from deps import EnqueueDep, HubDep, JobsDep, SettingsDep
from router.schemas import ERROR_RESPONSES, JobId, TokenId, UploadAccepted
from services.models import JobSnapshot
from services.progress_stream import AlreadyFinished, check_stream_start, job_events
from services.results import wait_for_snapshot
from services.submission import submit_upload

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
                    "properties": {"file": {"type": "string", "format": "binary"}},
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
    token_id: TokenId, request: Request, settings: SettingsDep, jobs: JobsDep, enqueue: EnqueueDep
) -> JSONResponse:
    accepted = await submit_upload(
        token_id=token_id,
        chunks=request.stream(),
        content_type=request.headers.get("content-type"),
        content_length=request.headers.get("content-length"),
        settings=settings,
        store=jobs,
        enqueue=enqueue,
    )
    body = UploadAccepted(
        job_id=accepted.job_id,
        task_id=accepted.task_id,
        status=accepted.status,
        message=ACCEPTED_MESSAGE,
        progress_url=progress_path(accepted.job_id),
        result_url=result_path(accepted.job_id),
    )
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=202,
        headers={"Location": body.result_url},
    )


@router.get(
    "/analysis-result/{job_id}",
    response_model=JobSnapshot,
    summary="The job's current state; `?wait=N` holds until it is finished or N seconds pass",
)
async def analysis_result(
    job_id: JobId,
    jobs: JobsDep,
    hub: HubDep,
    wait: Annotated[float, Query(ge=0, le=60, description="Long-poll up to N seconds")] = 0,
) -> JobSnapshot:
    return await wait_for_snapshot(jobs, hub, job_id, wait=wait)


@router.get(
    "/analysis-progress/{job_id}",
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {}}}, 204: {"description": "Finished"}},
    summary="Server-Sent Events: the job snapshot at every change, resumable by Last-Event-ID",
)
async def analysis_progress(
    job_id: JobId,
    jobs: JobsDep,
    hub: HubDep,
    settings: SettingsDep,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    last_event_id: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    try:
        start = await check_stream_start(jobs, job_id, last_event_id_header or last_event_id)
    except AlreadyFinished:
        return Response(status_code=204)
    return EventSourceResponse(
        job_events(jobs, hub, start, retry_ms=settings.sse_retry_ms),
        ping=settings.sse_ping_seconds,
        send_timeout=settings.sse_send_timeout_seconds,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
