"""The progress page (`GET /`): static HTML + JS, no build step, plus `GET /contract.js`, the
part of the job contract the page needs (stages with their labels, terminal statuses), rendered
from the stage table so the page never repeats it."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response

from yousync.core.models import TERMINAL_STATUSES, JobStatus
from yousync.core.stages import Stage

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

router = APIRouter(include_in_schema=False)


@router.get("/")
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


@cache
def contract_script() -> str:
    contract = {
        "stages": [
            {"name": stage.value, "start": stage.start, "end": stage.end, "labels": stage.labels}
            for stage in Stage
        ],
        "terminalStatuses": sorted(status.value for status in TERMINAL_STATUSES),
        # Terminal, plus `deleted`: the statuses after which a job's stream ends.
        "streamEndStatuses": sorted(status.value for status in JobStatus if status.ends_stream),
    }
    body = json.dumps(contract, ensure_ascii=False, indent=2)
    return f"// Generated from yousync.core.stages and models.\nconst CONTRACT = {body};\n"


@router.get("/contract.js")
async def contract() -> Response:
    return Response(
        contract_script(),
        media_type="text/javascript; charset=utf-8",
        headers={"Cache-Control": "no-cache"},
    )
