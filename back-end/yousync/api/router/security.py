"""The authentication dependency of the API routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query, Request

from yousync.api.auth import Unauthorized, check_api_key, check_stream_token
from yousync.api.deps import SettingsDep

# Only these read-only job URLs accept a job-bound stream token instead of an API key:
# they are what an EventSource (which cannot send headers) and a shared result link open.
_STREAM_TOKEN_ROUTES = ("analysis_progress", "analysis_result")


async def require_auth(
    request: Request,
    settings: SettingsDep,
    token: Annotated[
        str | None, Query(description="Stream token from the upload answer (EventSource)")
    ] = None,
) -> None:
    keys = settings.api_key_set
    if not keys:
        return
    authorization = request.headers.get("authorization")
    if token and not authorization:
        route = request.scope.get("route")
        job_id = request.path_params.get("job_id")
        if getattr(route, "name", None) in _STREAM_TOKEN_ROUTES and job_id:
            check_stream_token(settings.stream_secret, job_id, token)
            return
        raise Unauthorized("unauthorized", "Stream tokens open only their job's stream and result")
    check_api_key(keys, authorization)
