"""Auth and exposure, against an API process started with API_KEYS and small limits: bearer
keys everywhere but /healthz, job-bound expiring stream tokens for EventSource, CORS, and the
per-process bounds on streams and concurrent uploads."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from devtools import stack
from tests.helpers import sse
from tests.helpers.audio import pcm_wav, wav_bytes
from tests.helpers.wait import wait_until
from yousync.api.auth import issue_stream_token
from yousync.api.uploads.receive import WRITE_BATCH

SECRET = "test-stream-secret"
KEY = {"Authorization": "Bearer key-one"}


@pytest.fixture(scope="module")
def secured_api(backend_env: dict[str, str], workdir: Path) -> Iterator[str]:
    env = {
        **backend_env,
        "API_KEYS": "key-one,key-two",
        "STREAM_TOKEN_SECRET": SECRET,
        "SSE_MAX_CLIENTS": "1",
        "UPLOAD_MAX_CONCURRENT_PER_CLIENT": "1",
        "CORS_ORIGINS": "https://app.example",
    }
    proc = stack.api_proc(env, workdir).start()
    yield f"http://127.0.0.1:{proc.name.split(':')[1]}"
    proc.stop()


def upload(base: str, token_id: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(
        f"{base}/tokens/{token_id}/upload-audio",
        files={"file": ("a.wav", wav_bytes(0.5), "audio/wav")},
        headers=headers or {},
    )


def test_auth_when_no_or_wrong_key_then_401_json_and_healthz_stays_open(
    secured_api: str, token_id: str, redis_client
) -> None:  # type: ignore[no-untyped-def]
    assert httpx.get(f"{secured_api}/healthz").status_code == 200
    missing = upload(secured_api, token_id)
    assert missing.status_code == 401 and missing.json()["code"] == "unauthorized"
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = upload(secured_api, token_id, {"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["code"] == "invalid_api_key"
    assert httpx.get(f"{secured_api}/metrics").status_code == 401
    assert httpx.get(f"{secured_api}/readyz").status_code == 401
    assert httpx.get(f"{secured_api}/readyz", headers=KEY).status_code in (200, 503)
    assert redis_client.keys("yousync:job:*") == [], "nothing was created"


def test_stream_token_when_used_for_its_job_then_opens_stream_and_result_only(
    secured_api: str, pipeline: str, token_id: str
) -> None:
    first = upload(secured_api, token_id, KEY)
    assert first.status_code == 202
    body = first.json()
    token = body["stream_token"]
    events = list(sse.stream(f"{secured_api}{body['progress_url']}?token={token}"))
    assert events[-1].json["status"] == "completed"
    result = httpx.get(f"{secured_api}{body['result_url']}?token={token}")
    assert result.status_code == 200

    other = upload(secured_api, f"{token_id}-x", KEY).json()
    stolen = httpx.get(f"{secured_api}{other['result_url']}?token={token}")
    assert stolen.status_code == 403 and stolen.json()["code"] == "invalid_stream_token"
    expired = issue_stream_token(SECRET, body["job_id"], ttl_seconds=-10)
    late = httpx.get(f"{secured_api}{body['result_url']}?token={expired}")
    assert late.status_code == 403 and late.json()["code"] == "expired_stream_token"
    cancel = httpx.post(f"{secured_api}/tokens/analysis-cancel/{other['job_id']}?token={token}")
    assert cancel.status_code == 401, "a stream token cannot act on a job"
    feed = httpx.get(f"{secured_api}/tokens/{token_id}/analysis-progress?token={token}")
    assert feed.status_code == 401
    httpx.get(f"{secured_api}{other['result_url']}?wait=30", headers=KEY, timeout=40)


def test_delete_when_stream_token_or_no_key_then_401_and_with_a_key_then_204(
    secured_api: str, pipeline: str, token_id: str
) -> None:
    body = upload(secured_api, token_id, KEY).json()
    url = f"{secured_api}{body['result_url']}"
    httpx.get(f"{url}?wait=30", headers=KEY, timeout=40)
    # The job's own stream token opens its stream and result, never deletes it.
    with_token = httpx.delete(f"{url}?token={body['stream_token']}")
    assert with_token.status_code == 401 and with_token.json()["code"] == "unauthorized"
    assert httpx.delete(url).status_code == 401
    assert httpx.get(url, headers=KEY).status_code == 200, "still there"
    assert httpx.delete(url, headers=KEY).status_code == 204
    assert httpx.delete(url, headers=KEY).status_code == 404


def test_cors_when_origin_is_listed_then_allowed_else_not(secured_api: str) -> None:
    allowed = httpx.options(
        f"{secured_api}/tokens/t/upload-audio",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
    )
    assert allowed.headers.get("access-control-allow-origin") == "https://app.example"
    denied = httpx.options(
        f"{secured_api}/tokens/t/upload-audio",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in denied.headers


def test_streams_when_over_sse_max_clients_then_503_with_retry_after(
    secured_api: str, pipeline: str, token_id: str
) -> None:
    with (
        httpx.Client(timeout=10) as first,
        first.stream(
            "GET", f"{secured_api}/tokens/{token_id}/analysis-progress", headers=KEY
        ) as held,
    ):
        assert held.status_code == 200
        wait_until(
            lambda: sse.hub_clients(secured_api, headers=KEY) == 1,
            timeout=10,
            what="the held stream counted by the hub",
        )
        refused = httpx.get(f"{secured_api}/tokens/{token_id}/analysis-progress", headers=KEY)
        assert refused.status_code == 503 and refused.json()["code"] == "too_many_streams"
        assert refused.headers["retry-after"] == "5"


def spooling(spool_dir: Path) -> set[str]:
    """Uploads the API is receiving or has received: spool files named by the bare job id."""
    return {path.name for path in spool_dir.iterdir() if "." not in path.name}


def test_uploads_when_client_exceeds_concurrency_then_429(
    secured_api: str, pipeline: str, token_id: str, spool_dir: Path
) -> None:
    target = urlsplit(secured_api)
    part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
    head = (
        f"POST /tokens/{token_id}/upload-audio HTTP/1.1\r\nHost: x\r\n"
        "Authorization: Bearer key-one\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\n"
        "Content-Length: 2000000\r\n\r\n"
    )
    before = spooling(spool_dir)
    slow = socket.create_connection((target.hostname, target.port))
    # More than one write batch of the file, so the API starts its spool file, and less than
    # the declared length, so the upload stays in progress.
    slow.sendall(head.encode() + part + pcm_wav(bytes(1_500_000), rate=16000)[: WRITE_BATCH * 2])
    wait_until(
        lambda: spooling(spool_dir) - before,
        timeout=10,
        what="the first upload in progress, holding this client's only slot",
    )
    second = upload(secured_api, token_id, KEY)
    assert second.status_code == 429 and second.json()["code"] == "too_many_uploads"
    slow.close()

    def third_accepted() -> httpx.Response | None:
        response = upload(secured_api, token_id, KEY)
        assert response.status_code in (202, 429), response.text
        return response if response.status_code == 202 else None

    third = wait_until(
        third_accepted, timeout=10, what="the slot released when the first client went away"
    )
    httpx.get(f"{secured_api}{third.json()['result_url']}?wait=30", headers=KEY, timeout=40)
