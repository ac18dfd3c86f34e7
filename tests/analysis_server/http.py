"""Helpers of the analysis server's HTTP tests."""

from __future__ import annotations

from typing import Any, Protocol

import httpx

from tests.conftest import ANALYSIS_SECRET

NDJSON = "application/x-ndjson"
# What the worker sends; every route but /healthz refuses a request without it.
AUTH = {"Authorization": f"Bearer {ANALYSIS_SECRET}"}


class Upload(Protocol):
    def __call__(self, body: bytes, token_id: str = ...) -> str: ...


def take_key(token_id: str, job_id: str = "job-1") -> str:
    """Where the worker stores a job's take: the only keys /analyze reads."""
    return f"audio/{token_id}/{job_id}.flac"


def body_for(key: str, **overrides: Any) -> dict[str, Any]:
    """The worker's request for the take at `key` (token and job read back from the key)."""
    _prefix, token_id, name = key.split("/", 2)
    return {"job_id": name.rsplit(".", 1)[0], "token_id": token_id, "key": key, **overrides}


def worker_client(base_url: str, *, timeout: float = 30.0) -> httpx.Client:
    """A client that authenticates as the worker does."""
    return httpx.Client(base_url=base_url, timeout=timeout, headers=AUTH)


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    """The error contract: JSON `{"detail", "code"}` with the given status and code."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"detail", "code"}
    assert body["code"] == code
    assert isinstance(body["detail"], str)
    assert body["detail"]
