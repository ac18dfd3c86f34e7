"""Readiness of each part the API depends on, checked concurrently with its own timeout, so one
slow dependency shows as itself instead of making /readyz hang.

Each check reports `status` (`up`/`down`), `ok`, `latency_ms`, `required` and, when down, the
`error`. /readyz is 503 when any *required* check is down; optional checks (`redis_policy`) are
reported without failing readiness.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import anyio

Check = Callable[[], Awaitable[Any]]


async def _timed(check: Check, limit_seconds: float) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        with anyio.fail_after(limit_seconds):
            await check()
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return {
            "status": "down",
            "ok": False,
            "latency_ms": round((time.perf_counter() - started) * 1000, 1),
            "error": error[:200],
        }
    return {
        "status": "up",
        "ok": True,
        "latency_ms": round((time.perf_counter() - started) * 1000, 1),
    }


async def check_all(
    checks: dict[str, Check],
    *,
    limit_seconds: float = 2.0,
    optional: Collection[str] = (),
) -> dict[str, Any]:
    results: dict[str, Any] = {}

    async def run(name: str, check: Check) -> None:
        results[name] = {**await _timed(check, limit_seconds), "required": name not in optional}

    async with anyio.create_task_group() as group:
        for name, check in checks.items():
            group.start_soon(run, name, check)
    return {name: results[name] for name in checks}


def is_ready(results: dict[str, Any]) -> bool:
    return all(result["ok"] for result in results.values() if result["required"])
