"""Every error the API answers has the body `{"detail": str, "code": str}`.

Named exceptions are raised by services and mapped to HTTP here, in one place, so routers never
build error responses and no bad input can surface as a 500 with an HTML or plain-text body.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from yousync.api.auth import Forbidden, Unauthorized
from yousync.api.control import JobConflict
from yousync.api.limits import TooManyStreams, TooManyUploads
from yousync.api.streaming.progress_stream import InvalidLastEventId, JobNotFound
from yousync.api.uploads.receive import UploadRejected
from yousync.api.uploads.submission import ServiceUnavailable
from yousync.observability import metrics

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers


def error_response(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"detail": detail, "code": code}, status_code=status, headers=headers)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}


def _validation_detail(exc: RequestValidationError) -> tuple[str, str]:
    errors = exc.errors()
    first = errors[0] if errors else {}
    where = ".".join(str(part) for part in first.get("loc", ()))
    if where.startswith("path.token_id"):
        return "invalid_token_id", "token_id must be 1–64 characters of A–Z, a–z, 0–9, _ or -"
    if where.startswith("path.job_id"):
        return "invalid_job_id", "job_id must be a job id returned by the upload"
    return "invalid_request", f"{where}: {first.get('msg', 'invalid value')}"


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.detail, exc.headers)

    @app.exception_handler(UploadRejected)
    async def _upload_rejected(_: Request, exc: UploadRejected) -> JSONResponse:
        metrics.upload_rejected(exc.code)
        # The body may be only partly read: close the connection rather than drain gigabytes.
        return error_response(exc.status, exc.code, exc.detail, {"Connection": "close"})

    @app.exception_handler(ServiceUnavailable)
    async def _unavailable(_: Request, exc: ServiceUnavailable) -> JSONResponse:
        metrics.upload_rejected(exc.code)
        headers = {"Retry-After": "5"}
        if exc.body_unread:
            headers["Connection"] = "close"
        return error_response(503, exc.code, exc.detail, headers)

    @app.exception_handler(JobConflict)
    async def _conflict(_: Request, exc: JobConflict) -> JSONResponse:
        return error_response(409, exc.code, exc.detail)

    @app.exception_handler(Unauthorized)
    async def _unauthorized(_: Request, exc: Unauthorized) -> JSONResponse:
        if isinstance(exc, Forbidden):
            return error_response(403, exc.code, exc.detail)
        return error_response(401, exc.code, exc.detail, {"WWW-Authenticate": "Bearer"})

    @app.exception_handler(TooManyStreams)
    async def _too_many_streams(_: Request, exc: TooManyStreams) -> JSONResponse:
        return error_response(
            503,
            "too_many_streams",
            "This server holds its maximum of streams; retry shortly",
            {"Retry-After": "5"},
        )

    @app.exception_handler(TooManyUploads)
    async def _too_many_uploads(_: Request, exc: TooManyUploads) -> JSONResponse:
        return error_response(
            429,
            "too_many_uploads",
            "Too many uploads at once from this client",
            {"Retry-After": "2", "Connection": "close"},
        )

    @app.exception_handler(JobNotFound)
    async def _job_not_found(_: Request, exc: JobNotFound) -> JSONResponse:
        return error_response(404, "job_not_found", "No such job (unknown or expired)")

    @app.exception_handler(InvalidLastEventId)
    async def _bad_last_event_id(_: Request, exc: InvalidLastEventId) -> JSONResponse:
        return error_response(400, "invalid_last_event_id", str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        code, detail = _validation_detail(exc)
        return error_response(422, code, detail)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RedisError)
    async def _redis_down(_: Request, exc: RedisError) -> JSONResponse:
        log.warning("redis unavailable: %s", exc)
        return error_response(
            503,
            "redis_unavailable",
            "Job state store is unavailable; try again shortly",
            {"Retry-After": "5"},
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error_response(500, "internal_error", "Internal error")
