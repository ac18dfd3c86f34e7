"""Fixtures of the analysis server's HTTP tests: a client of the session server, a way to put
objects into the test bucket, and two more servers with other settings, started once for the
whole package (each is a real uvicorn process)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devtools import stack
from tests.analysis_server.http import Upload, take_key, worker_client


@pytest.fixture
def upload(s3_client: Any, s3_bucket: str) -> Upload:
    """Put bytes into the test bucket under a fresh key and return the key."""

    def put(body: bytes, token_id: str = "tok-1") -> str:
        key = take_key(token_id, uuid.uuid4().hex)
        s3_client.put_object(Bucket=s3_bucket, Key=key, Body=body)
        return key

    return put


@pytest.fixture
def client(analysis_url: str) -> Iterator[httpx.Client]:
    with worker_client(analysis_url) as http:
        yield http


@pytest.fixture(scope="package")
def fast_url(stack_env: dict[str, str], workdir: Path) -> Iterator[str]:
    """Default limits, but no pacing floor: for tests that analyse many clips."""
    proc = stack.analysis_proc({**stack_env, "ANALYSIS_MIN_SECONDS": "0"}, workdir).start()
    yield f"http://127.0.0.1:{proc.name.split(':')[1]}"
    proc.kill()


@pytest.fixture
def fast(fast_url: str) -> Iterator[httpx.Client]:
    with worker_client(fast_url) as http:
        yield http


@pytest.fixture(scope="package")
def limited_url(stack_env: dict[str, str], workdir: Path) -> Iterator[str]:
    """No pacing floor; 50 kB and 1.5 s limits."""
    env = {
        **stack_env,
        "ANALYSIS_MIN_SECONDS": "0",
        "ANALYSIS_MAX_BYTES": "50000",
        "ANALYSIS_MAX_DURATION_SECONDS": "1.5",
    }
    proc = stack.analysis_proc(env, workdir).start()
    yield f"http://127.0.0.1:{proc.name.split(':')[1]}"
    proc.kill()


@pytest.fixture(scope="package")
def no_storage_url(stack_env: dict[str, str], workdir: Path) -> Iterator[str]:
    """Pointed at a port where no S3 listens."""
    dead_port = stack.free_port()
    env = {**stack_env, "S3_ENDPOINT_URL": f"http://127.0.0.1:{dead_port}"}
    proc = stack.analysis_proc(env, workdir).start()
    yield f"http://127.0.0.1:{proc.name.split(':')[1]}"
    proc.kill()
