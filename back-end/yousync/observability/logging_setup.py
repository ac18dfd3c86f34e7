"""Structured log lines for the API, the worker and Beat: `key=value` (logfmt) or JSON.

One line per HTTP request (API) and per task and pipeline stage (worker), each with `job_id`
when one is known, so `grep <job_id>` over the API's and the workers' logs follows one job end
to end. The job id travels in a context variable: the API's request middleware sets it from the
path (or from the upload's `Location` answer); the worker sets it from the task's argument.
`LOG_FORMAT=json` switches to one JSON object per line for log shippers.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any, TextIO

from yousync.observability import metrics

JOB_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)

# Job ids are UUID4s: found in a path or a Location header wherever they sit.
JOB_ID_PATTERN = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

_BARE = re.compile(r"^[A-Za-z0-9_.:/@+\-]+$")
_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def _logfmt_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    text = value if isinstance(value, str) else str(value)
    return text if _BARE.match(text) else json.dumps(text, ensure_ascii=False)


class StructuredFormatter(logging.Formatter):
    """Fields: ts, level, service, logger, msg, job_id (when known), then the record's extras
    (`log.info("stage done", extra={"stage": "uploading", "seconds": 1.2})`)."""

    def __init__(self, *, service: str, json_lines: bool = False) -> None:
        super().__init__()
        self.service = service
        self.json_lines = json_lines

    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        job_id = getattr(record, "job_id", None) or JOB_ID.get()
        if job_id:
            fields["job_id"] = job_id
        for key, value in vars(record).items():
            if value is None or key in _RESERVED or key in fields or key.startswith("_"):
                continue
            fields[key] = value
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        return fields

    def format(self, record: logging.LogRecord) -> str:
        fields = self.fields(record)
        if self.json_lines:
            return json.dumps(fields, ensure_ascii=False, default=str)
        return " ".join(f"{key}={_logfmt_value(value)}" for key, value in fields.items())


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is at emit time (pytest swaps it per test)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _: TextIO) -> None:
        pass


_MARK = "_yousync_handler"


def configure(
    service: str,
    *,
    level: str | int = "INFO",
    log_format: str = "text",
    logfile: str | None = None,
) -> None:
    """Install the structured handler on the root logger (replacing an earlier one of ours,
    leaving anyone else's alone) and route uvicorn's loggers through it. Uvicorn's own access
    log is silenced: the API's request middleware writes the richer line. Lines go to stderr,
    or to `logfile` (a worker's `--logfile`)."""
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _MARK, False):
            root.removeHandler(old)
            old.close()
    handler: logging.Handler = (
        logging.FileHandler(logfile, encoding="utf-8") if logfile else _StderrHandler()
    )
    setattr(handler, _MARK, True)
    handler.setFormatter(StructuredFormatter(service=service, json_lines=log_format == "json"))
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False
    access.disabled = True


access_log = logging.getLogger("yousync.access")


def job_id_in(text: str | None) -> str | None:
    if not text:
        return None
    found = JOB_ID_PATTERN.search(text)
    return found.group(0) if found else None


class RequestLogMiddleware:
    """One line per request when it ends — method, path, route, status, duration_ms, job_id —
    and the same numbers into the HTTP metrics; for an SSE stream, when the stream ends. Pure
    ASGI rather than `BaseHTTPMiddleware`, which would put every streamed response (SSE) through
    an extra task and memory stream."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        job_id = job_id_in(scope.get("path"))
        token = JOB_ID.set(job_id)

        async def send_and_note(message: dict[str, Any]) -> None:
            nonlocal status, job_id
            if message["type"] == "http.response.start":
                status = int(message["status"])
                if job_id is None:
                    for name, value in message.get("headers", ()):
                        if name.lower() == b"location":
                            job_id = job_id_in(value.decode("latin-1"))
                            JOB_ID.set(job_id)
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            seconds = time.perf_counter() - started
            route = _route_of(scope)
            metrics.http_request(scope["method"], route, status, seconds)
            access_log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "route": route,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 1),
                    "client": (scope.get("client") or ("-",))[0],
                    "job_id": job_id,
                },
            )
            JOB_ID.reset(token)


def _route_of(scope: dict[str, Any]) -> str:
    """The route template (bounded label values), never the raw path."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if path:
        return str(path)
    if str(scope.get("path", "")).startswith("/static/"):
        return "/static"
    return "unmatched"
