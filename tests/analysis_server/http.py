"""Helpers of the analysis server's HTTP tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

NDJSON = "application/x-ndjson"

Upload = Callable[[bytes], str]


def body_for(key: str, bucket: str, **overrides: Any) -> dict[str, Any]:
    return {"job_id": "job-1", "token_id": "tok-1", "bucket": bucket, "key": key, **overrides}


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    """The error contract: JSON `{"detail", "code"}` with the given status and code."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"detail", "code"}
    assert body["code"] == code
    assert isinstance(body["detail"], str)
    assert body["detail"]
