"""Request and response shapes of the HTTP API that are not the job snapshot itself."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path
from pydantic import BaseModel

from yousync.core.models import JobStatus

TokenId = Annotated[
    str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="1–64 of A–Z a–z 0–9 _ -")
]
JobId = Annotated[
    str,
    Path(
        pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$",
        description="The job id returned by the upload (UUID4)",
    ),
]


class UploadAccepted(BaseModel):
    job_id: str
    task_id: str
    status: JobStatus
    message: str
    progress_url: str
    result_url: str
    stream_token: str | None = None
    deduplicated: bool = False


class ErrorBody(BaseModel):
    detail: str
    code: str


ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorBody} for status in (400, 401, 403, 404, 409, 413, 415, 422, 503)
}
