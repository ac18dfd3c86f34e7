"""Liveness and readiness. /healthz never touches a dependency (a load balancer must not kill a
healthy process because Redis blinked); /readyz reports each dependency separately — status,
latency, error — and answers 503 while any required one is down."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from yousync.api.readiness import check_all, is_ready
from yousync.api.router.security import require_auth

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    # Like every endpoint but /healthz, behind API_KEYS when set: it names internal hosts.
    dependencies=[Depends(require_auth)],
    summary="Redis, broker, S3 bucket and the analysis server, each reported; 503 if one is down",
    responses={503: {"description": "A required dependency is down (named in `checks`)"}},
)
async def readyz(request: Request) -> JSONResponse:
    checks = await check_all(
        request.app.state.readiness_checks,
        optional=request.app.state.readiness_optional,
    )
    ready = is_ready(checks)
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", "checks": checks},
        status_code=200 if ready else 503,
        headers={"Cache-Control": "no-store"},
    )
