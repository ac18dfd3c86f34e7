"""The analysis HTTP service: POST /analyze, /references/{token_id}, /healthz, /readyz.

Run with `cd analysis-server && uvicorn analysis_server.app:app --port 8001`; the OpenAPI
document is at /openapi.json and browsable at /docs.

POST /analyze answers JSON by default. With `Accept: application/x-ndjson` it streams one JSON
object per line instead:
    {"progress": 0.1, "stage": "decoded"}        progress in [0, 1], never decreasing
    {"progress": 0.27, "stage": "loudness"}      … one per stage, plus pacing ticks
    {"result": {...}}                            last line on success (same body as the JSON)
    {"error": {"code": "...", "message": "..."}} last line if a stage fails mid-stream
Fetch and decode happen before the response starts, so a missing object, an oversized or
undecodable file, or unreachable storage still get their 4xx/5xx status, never a 200 stream.

Only the worker (and operators) may call it: every route but /healthz wants the shared secret
as `Authorization: Bearer <ANALYSIS_SHARED_SECRET>` (401 otherwise). The bucket is always the
server's own S3_BUCKET, and /analyze reads only the job's own key, `audio/{token_id}/{job_id}.*`.

References: `PUT /references/{token_id}` (raw audio body) stores the original line a token's
takes are compared with; `GET` returns it, `DELETE` removes it. While one exists, every
analysis for that token carries a `sync` block (offset, timing, 0–100 score).
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import anyio
from fastapi import Depends, FastAPI, Path, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from analysis_server.analysis import (
    Inputs,
    Pacing,
    Progress,
    analyse,
    fetch_and_decode,
    fetch_reference,
)
from analysis_server.config import Settings, get_settings
from analysis_server.errors import (
    AnalysisError,
    AudioTooLarge,
    Unauthorized,
    error_body,
    install_error_handlers,
)
from analysis_server.models import (
    TOKEN_ID_PATTERN,
    AnalysisResult,
    AnalyzeRequest,
    ErrorBody,
    ReferenceInfo,
)
from analysis_server.references import (
    delete_reference,
    open_reference,
    reference_key,
    store_reference,
)
from analysis_server.storage import S3Client, check_bucket, open_s3_client

log = logging.getLogger(__name__)

NDJSON = "application/x-ndjson"


@dataclass(frozen=True)
class Services:
    """Everything a request needs, built once per process in the lifespan."""

    settings: Settings
    s3: S3Client
    # Bounds decodes and feature passes in flight: each holds a whole decoded clip in memory.
    limiter: anyio.CapacityLimiter


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


OPEN_PATHS = frozenset({"/healthz"})


class RequireSharedSecret:
    """Every request but OPEN_PATHS must carry `Authorization: Bearer <shared secret>`,
    compared in constant time; anyone else gets 401 before a byte of the body is read (a
    route dependency would run only after FastAPI parsed the body, and answer 422 first)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            services: Services = scope["app"].state.services
            presented = Headers(scope=scope).get("authorization", "")
            scheme, _, token = presented.partition(" ")
            expected = services.settings.analysis_shared_secret.encode()
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                token.strip().encode(), expected
            ):
                error = Unauthorized("this server answers the YouSync worker only (bearer secret)")
                response = JSONResponse(
                    error_body(error.code, error.message),
                    status_code=error.status_code,
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "unauthorized"}
}
TokenId = Annotated[str, Path(pattern=TOKEN_ID_PATTERN, description="The token's id.")]


def wants_ndjson(accept: str) -> bool:
    return any(part.split(";", 1)[0].strip().lower() == NDJSON for part in accept.split(","))


def _line(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode() + b"\n"


async def ndjson_lines(events: AsyncIterator[Progress | AnalysisResult]) -> AsyncIterator[bytes]:
    """Encode analysis events as NDJSON; a failure becomes a final error line, because the
    200 status is already on the wire."""
    try:
        async for event in events:
            if isinstance(event, Progress):
                yield _line({"progress": round(event.progress, 3), "stage": event.stage})
            else:
                yield _line({"result": event.model_dump(mode="json")})
    except AnalysisError as exc:
        yield _line({"error": {"code": exc.code, "message": exc.message}})
    except Exception:
        log.exception("analysis failed after the stream started")
        yield _line({"error": {"code": "internal_error", "message": "internal error"}})


def create_app(settings: Settings | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        resolved = settings or get_settings()
        async with open_s3_client(resolved) as s3:
            app.state.services = Services(
                settings=resolved,
                s3=s3,
                limiter=anyio.CapacityLimiter(resolved.analysis_max_concurrency),
            )
            yield

    app = FastAPI(title="YouSync analysis server", version="1", lifespan=lifespan)
    install_error_handlers(app)
    app.add_middleware(RequireSharedSecret)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", responses=UNAUTHORIZED)
    async def readyz(services: ServicesDep) -> JSONResponse:
        check = await check_bucket(
            services.s3,
            bucket=services.settings.s3_bucket,
            within_seconds=services.settings.readyz_timeout_seconds,
        )
        s3: dict[str, Any] = {"ok": check.ok, "latency_ms": check.latency_ms}
        if check.error:
            s3["error"] = check.error
        return JSONResponse(
            {"status": "ready" if check.ok else "unavailable", "s3": s3},
            status_code=200 if check.ok else 503,
        )

    @app.post(
        "/analyze",
        response_model=AnalysisResult,
        responses={
            **UNAUTHORIZED,
            200: {"content": {NDJSON: {}}, "description": "JSON, or NDJSON progress lines"},
            404: {"model": ErrorBody, "description": "object_not_found"},
            413: {"model": ErrorBody, "description": "audio_too_large"},
            422: {
                "model": ErrorBody,
                "description": "invalid_request, unsupported_audio_format, undecodable_audio, "
                "audio_too_long, empty_audio",
            },
            502: {"model": ErrorBody, "description": "storage_error"},
            503: {"model": ErrorBody, "description": "storage_unavailable, decoder_unavailable"},
        },
    )
    async def analyze(
        body: AnalyzeRequest, request: Request, services: ServicesDep
    ) -> AnalysisResult | StreamingResponse:
        settings = services.settings
        pacing = Pacing(
            started=anyio.current_time(),
            min_seconds=settings.analysis_min_seconds,
            interval=settings.analysis_progress_interval_seconds,
        )
        limits = settings.decode_limits()
        audio, size = await fetch_and_decode(
            services.s3,
            bucket=settings.s3_bucket,
            key=body.key,
            max_bytes=settings.analysis_max_bytes,
            limits=limits,
            limiter=services.limiter,
        )
        reference = await fetch_reference(
            services.s3,
            bucket=settings.s3_bucket,
            key=reference_key(body.token_id),
            max_bytes=settings.analysis_max_bytes,
            limits=limits,
            limiter=services.limiter,
        )
        inputs = Inputs(audio=audio, reference=reference, max_offset_ms=settings.sync_max_offset_ms)
        events = analyse(inputs, request=body, size=size, pacing=pacing, limiter=services.limiter)
        if wants_ndjson(request.headers.get("accept", "")):
            return StreamingResponse(
                ndjson_lines(events),
                media_type=NDJSON,
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        result: AnalysisResult | None = None
        async for event in events:
            if isinstance(event, AnalysisResult):
                result = event
        assert result is not None, "analyse() always ends with a result"
        return result

    @app.put(
        "/references/{token_id}",
        status_code=201,
        response_model=ReferenceInfo,
        openapi_extra={
            "requestBody": {
                "required": True,
                "description": "The original line, as an audio file (any format ffmpeg reads).",
                "content": {"audio/*": {"schema": {"type": "string", "format": "binary"}}},
            }
        },
        responses={
            **UNAUTHORIZED,
            200: {"model": ReferenceInfo, "description": "replaced the token's reference"},
            201: {"description": "stored the token's first reference"},
            413: {"model": ErrorBody, "description": "audio_too_large"},
            422: {
                "model": ErrorBody,
                "description": "invalid_request, unsupported_audio_format, undecodable_audio, "
                "audio_too_long, empty_audio",
            },
            503: {"model": ErrorBody, "description": "storage_unavailable, decoder_unavailable"},
        },
    )
    async def put_reference(
        token_id: TokenId, request: Request, response: Response, services: ServicesDep
    ) -> ReferenceInfo:
        """Store (or replace) the original line of `token_id`; it must decode as audio."""
        settings = services.settings
        declared = int(request.headers.get("content-length") or 0)
        if declared > settings.analysis_max_bytes:
            # Refused before reading a byte; the streamed count below catches liars.
            raise AudioTooLarge(
                f"the reference is {declared} bytes; the limit is {settings.analysis_max_bytes}"
            )
        info, created = await store_reference(
            services.s3,
            bucket=settings.s3_bucket,
            token_id=token_id,
            chunks=request.stream(),
            declared_type=request.headers.get("content-type"),
            max_bytes=settings.analysis_max_bytes,
            limits=settings.decode_limits(),
            limiter=services.limiter,
        )
        response.status_code = 201 if created else 200
        return info

    @app.get(
        "/references/{token_id}",
        response_class=StreamingResponse,
        responses={
            **UNAUTHORIZED,
            200: {"content": {"audio/*": {}}, "description": "the stored audio, as uploaded"},
            404: {"model": ErrorBody, "description": "reference_not_found"},
            503: {"model": ErrorBody, "description": "storage_unavailable"},
        },
    )
    async def get_reference(token_id: TokenId, services: ServicesDep) -> StreamingResponse:
        """The stored original line, streamed from storage as it was uploaded."""
        stored = await open_reference(
            services.s3, bucket=services.settings.s3_bucket, token_id=token_id
        )
        headers = {"Content-Length": str(stored.size)}
        headers.update(
            {
                f"X-Reference-{name.title()}": value
                for name, value in stored.metadata.items()
                if name in {"duration-ms", "sample-rate", "channels"}
            }
        )
        return StreamingResponse(stored.chunks(), media_type=stored.content_type, headers=headers)

    @app.delete(
        "/references/{token_id}",
        status_code=204,
        response_class=Response,
        responses={
            **UNAUTHORIZED,
            404: {"model": ErrorBody, "description": "reference_not_found"},
            503: {"model": ErrorBody, "description": "storage_unavailable"},
        },
    )
    async def remove_reference(token_id: TokenId, services: ServicesDep) -> Response:
        """Forget the token's reference; later analyses carry no `sync` block."""
        await delete_reference(services.s3, bucket=services.settings.s3_bucket, token_id=token_id)
        return Response(status_code=204)

    return app


app = create_app()
