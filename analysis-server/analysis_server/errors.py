"""The few named failures of an analysis, and their one mapping to HTTP.

Every error body is `{"detail": str, "code": str}`, like the API's, so the worker can branch on
`code` and on the status class: 4xx means the audio or the request is bad and retrying cannot
help; 5xx (503 above all) means storage or the decoder is unwell and a retry may succeed.
"""

from __future__ import annotations

from typing import ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class AnalysisError(Exception):
    """Base of the expected failures; the class fixes the status and code, the message varies."""

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "analysis_failed"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ObjectNotFound(AnalysisError):
    status_code = 404
    code = "object_not_found"


class ReferenceNotFound(AnalysisError):
    status_code = 404
    code = "reference_not_found"


class AudioTooLarge(AnalysisError):
    status_code = 413
    code = "audio_too_large"


class UndecodableAudio(AnalysisError):
    status_code = 422
    code = "undecodable_audio"


class UnsupportedAudioFormat(AnalysisError):
    """Not one of the accepted containers/codecs, or a playlist or script naming other files."""

    status_code = 422
    code = "unsupported_audio_format"


class Unauthorized(AnalysisError):
    """No or a wrong shared secret: only the worker (and operators) may call this server."""

    status_code = 401
    code = "unauthorized"


class AudioTooLong(AnalysisError):
    status_code = 422
    code = "audio_too_long"


class EmptyAudio(AnalysisError):
    """Decodes, but holds no samples: nothing to measure, and a retry cannot change that."""

    status_code = 422
    code = "empty_audio"


class StorageUnavailable(AnalysisError):
    """S3 unreachable, timing out or answering 5xx: transient, the caller should retry."""

    status_code = 503
    code = "storage_unavailable"


class StorageError(AnalysisError):
    """S3 refused the read for another reason (e.g. access denied): our configuration, not
    the audio, so not a 4xx, and not known to be transient either."""

    status_code = 502
    code = "storage_error"


class DecoderUnavailable(AnalysisError):
    """ffmpeg/ffprobe missing on this host: the deployment is broken, not the audio."""

    status_code = 503
    code = "decoder_unavailable"


def error_body(code: str, detail: str) -> dict[str, str]:
    return {"detail": detail, "code": code}


def _summarise_validation(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        location = ".".join(str(item) for item in error.get("loc", ()))
        parts.append(f"{location}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


async def _on_analysis_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AnalysisError)
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
    return JSONResponse(
        error_body(exc.code, exc.message), status_code=exc.status_code, headers=headers
    )


async def _on_validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(error_body("invalid_request", _summarise_validation(exc)), status_code=422)


async def _on_http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse(
        error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
    )


async def _on_unexpected_error(_request: Request, exc: Exception) -> JSONResponse:
    # Starlette re-raises after this response, so the traceback still reaches the log.
    return JSONResponse(error_body("internal_error", "internal error"), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AnalysisError, _on_analysis_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected_error)
