"""Liveness and readiness. /healthz never touches a dependency (a load balancer must not kill a
healthy process because Redis blinked); /readyz reports each dependency separately."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from services.readiness import check_all

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Redis, broker, S3 and the analysis server, each reported")
async def readyz(request: Request) -> JSONResponse:
    checks = await check_all(request.app.state.readiness_checks)
    ready = all(check["ok"] for check in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", "checks": checks},
        status_code=200 if ready else 503,
    )
