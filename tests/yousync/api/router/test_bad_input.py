"""Every bad input gets its contract status as JSON with a stable code, and leaves nothing:
no job in Redis, no spool file, no S3 object; the server keeps serving."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import redis

from tests.helpers.audio import wav_bytes
from tests.helpers.multipart import multipart, with_text_fields

WAV = wav_bytes(1.0)
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 200
ZIP = b"PK\x03\x04" + b"\x00" * 200
LIMIT = 8 * 1024 * 1024  # MAX_UPLOAD_MB in the test stack


@dataclass
class Case:
    status: int
    code: str
    method: str = "POST"
    path: str = "/tokens/tok1/upload-audio"
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    chunked: bool = False  # send BIG_BODY with Transfer-Encoding: chunked


def raw(body: bytes, content_type: str, status: int, code: str, path: str = "") -> Case:
    return Case(
        status,
        code,
        path=path or "/tokens/tok1/upload-audio",
        content=body,
        headers={"Content-Type": content_type},
    )


def upload_as(token_path: str, status: int = 422, code: str = "invalid_token_id") -> Case:
    """A good file uploaded under a bad token (the path segment as sent, already encoded)."""
    return Case(
        status,
        code,
        path=f"/tokens/{token_path}/upload-audio",
        files=[("file", ("a.wav", WAV, "audio/wav"))],
    )


def named(filename: str | bytes) -> tuple[bytes, str]:
    return multipart(("file", filename, WAV))


BIG_BODY, BIG_TYPE = multipart(("file", "big.wav", WAV[:44] + b"\x00" * (LIMIT + 4096)))


def chunks(data: bytes, size: int = 256 * 1024):  # type: ignore[no-untyped-def]
    for start in range(0, len(data), size):
        yield data[start : start + size]


def callback_field(url: str) -> Case:
    """A good file whose form names `url` as its callback target (field before the file)."""
    body, content_type = multipart(("file", "a.wav", WAV))
    return raw(
        with_text_fields(body, callback_url=url), content_type, 422, "callback_url_not_allowed"
    )


def callback_header(url: str) -> Case:
    case = Case(422, "callback_url_not_allowed", files=[("file", ("a.wav", WAV, "audio/wav"))])
    case.headers["Callback-URL"] = url
    return case


def callback_after_file(url: str) -> Case:
    """The field after the file: refused once read, and the staged file removed."""
    body, content_type = multipart(("file", "a.wav", WAV))
    end = body.rindex(b"--XyZb0und--")
    text = f'--XyZb0und\r\nContent-Disposition: form-data; name="callback_url"\r\n\r\n{url}\r\n'
    return raw(
        body[:end] + text.encode() + body[end:], content_type, 422, "callback_url_not_allowed"
    )


truncated_wav = WAV[:2000]
cut_body, cut_type = multipart(("file", "a.wav", WAV))
BAD_JOB = str(uuid.uuid4())

CASES: dict[str, Callable[[], Case]] = {
    "no file field": lambda: Case(
        422, "missing_file", files=[("other", ("a.wav", WAV, "audio/wav"))]
    ),
    "empty file": lambda: Case(422, "empty_file", files=[("file", ("a.wav", b"", "audio/wav"))]),
    "text named .wav": lambda: Case(
        415, "unsupported_audio_format", files=[("file", ("a.wav", b"hello " * 100, "audio/wav"))]
    ),
    "png named .wav": lambda: Case(
        415, "unsupported_audio_format", files=[("file", ("a.wav", PNG, "audio/wav"))]
    ),
    "zip named .wav": lambda: Case(
        415, "unsupported_audio_format", files=[("file", ("a.wav", ZIP, "audio/wav"))]
    ),
    "tiny non-audio": lambda: Case(
        415, "unsupported_audio_format", files=[("file", ("a.wav", b"abc", "audio/wav"))]
    ),
    "truncated wav": lambda: Case(
        422, "truncated_audio", files=[("file", ("a.wav", truncated_wav, "audio/wav"))]
    ),
    "wav header only": lambda: Case(
        422, "empty_audio", files=[("file", ("a.wav", WAV[:44], "audio/wav"))]
    ),
    "oversized body": lambda: Case(
        413,
        "file_too_large",
        files=[("file", ("big.wav", WAV[:44] + b"\x00" * (LIMIT + 1024), "audio/wav"))],
    ),
    "two file fields": lambda: Case(
        422,
        "multiple_files",
        files=[("file", ("a.wav", WAV, "audio/wav")), ("file", ("b.wav", WAV, "audio/wav"))],
    ),
    "json instead of multipart": lambda: raw(
        b'{"file": 1}', "application/json", 415, "not_multipart"
    ),
    "multipart without boundary": lambda: raw(
        cut_body, "multipart/form-data", 422, "invalid_multipart"
    ),
    "multipart cut short": lambda: raw(cut_body[:-40], cut_type, 422, "invalid_multipart"),
    "token with space": lambda: upload_as("bad%20token"),
    "token of 65 chars": lambda: upload_as("a" * 65),
    "token with dots": lambda: upload_as("a..b"),
    "token with slash": lambda: upload_as("a/b", 404, "not_found"),
    "unknown job result": lambda: Case(
        404, "job_not_found", "GET", f"/tokens/analysis-result/{BAD_JOB}"
    ),
    "unknown job progress": lambda: Case(
        404, "job_not_found", "GET", f"/tokens/analysis-progress/{BAD_JOB}"
    ),
    "malformed job id": lambda: Case(
        422, "invalid_job_id", "GET", "/tokens/analysis-result/abc123-def456"
    ),
    "negative wait": lambda: Case(
        422, "invalid_request", "GET", f"/tokens/analysis-result/{BAD_JOB}?wait=-1"
    ),
    "huge wait": lambda: Case(
        422, "invalid_request", "GET", f"/tokens/analysis-result/{BAD_JOB}?wait=3600"
    ),
    "filename of 300 chars": lambda: raw(*named("a" * 300 + ".wav"), 422, "invalid_filename"),
    "path traversal filename": lambda: raw(*named("../../etc/x.wav"), 422, "invalid_filename"),
    "non-utf8 filename": lambda: raw(*named(b"\xff\xfe\xfd.wav"), 422, "invalid_filename"),
    "control chars in filename": lambda: raw(*named("a\x07b.wav"), 422, "invalid_filename"),
    "oversized body, chunked (no Content-Length)": lambda: Case(
        413, "file_too_large", content=None, headers={"Content-Type": BIG_TYPE}, chunked=True
    ),
    "token of dots (encoded)": lambda: upload_as("%2E%2E"),
    "token of 200 chars": lambda: upload_as("t" * 200),
    "job id with traversal": lambda: Case(
        404, "not_found", "GET", "/tokens/analysis-result/..%2F..%2Fetc%2Fpasswd"
    ),
    "progress of malformed job id": lambda: Case(
        422, "invalid_job_id", "GET", "/tokens/analysis-progress/not-a-job"
    ),
    "callback to a host off the allowlist": lambda: callback_field("https://evil.example.org/h"),
    "callback to 127.0.0.1": lambda: callback_field("http://127.0.0.1:8000/internal"),
    "callback to the metadata address": lambda: callback_header("http://169.254.169.254/latest"),
    "callback to an allowlisted name resolving to loopback": lambda: callback_header(
        "http://localhost:9/h"
    ),
    "callback not http": lambda: callback_header("file:///etc/passwd"),
    "callback with credentials": lambda: callback_field("http://u:p@127.0.0.3/h"),
    "callback field after the file": lambda: callback_after_file("http://10.0.0.1/h"),
    "callback header and field differ": lambda: Case(
        422,
        "callback_url_not_allowed",
        content=with_text_fields(cut_body, callback_url="http://127.0.0.3:9/a"),
        headers={"Content-Type": cut_type, "Callback-URL": "http://127.0.0.3:9/b"},
    ),
}


@pytest.fixture
def nothing_left(redis_client: redis.Redis, spool_dir: Path, s3_client, s3_bucket: str):  # type: ignore[no-untyped-def]
    """Checks, after the request, that no job, spool file or S3 object was added."""
    spool_before = set(spool_dir.iterdir())

    def check() -> None:
        assert redis_client.keys("yousync:*") == []
        assert set(spool_dir.iterdir()) == spool_before
        listed = s3_client.list_objects_v2(Bucket=s3_bucket, Prefix="audio/tok1/")
        assert listed.get("KeyCount", 0) == 0

    return check


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_when_sent_then_json_4xx_with_code_and_nothing_left(
    name: str, api_url: str, nothing_left: Callable[[], None]
) -> None:
    case = CASES[name]()
    try:
        response = httpx.request(
            case.method,
            f"{api_url}{case.path}",
            files=case.files,
            content=chunks(BIG_BODY) if case.chunked else case.content,
            headers=case.headers,
            timeout=30,
        )
    except (httpx.WriteError, httpx.RemoteProtocolError):
        pytest.fail("the server must answer before closing, even when it stops reading early")
    assert response.status_code == case.status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["code"] == case.code
    assert response.json()["detail"]
    nothing_left()
    assert httpx.get(f"{api_url}/healthz").status_code == 200


def test_upload_when_content_length_declares_too_much_then_413_before_body_is_sent(
    api_url: str, nothing_left: Callable[[], None]
) -> None:
    """The limit is enforced from Content-Length alone: the client never has to send the body."""
    url = urlsplit(api_url)
    request = (
        "POST /tokens/tok1/upload-audio HTTP/1.1\r\n"
        f"Host: {url.netloc}\r\n"
        "Content-Type: multipart/form-data; boundary=abc\r\n"
        f"Content-Length: {LIMIT * 4}\r\n\r\n"
    ).encode()
    with socket.create_connection((url.hostname, url.port), timeout=10) as conn:
        conn.sendall(request)
        received = b""
        while chunk := conn.recv(65536):  # the server closes after answering
            received += chunk
        answer = received.decode(errors="replace")
    assert answer.startswith("HTTP/1.1 413"), answer
    assert '"code":"file_too_large"' in answer
    nothing_left()


def test_progress_when_last_event_id_is_garbage_then_400(
    api_url: str, token_id: str, redis_client: redis.Redis
) -> None:
    body = httpx.post(
        f"{api_url}/tokens/{token_id}/upload-audio", files={"file": ("a.wav", WAV, "audio/wav")}
    ).json()
    for bad in ("garbage", "99999999999999-0"):
        response = httpx.get(f"{api_url}{body['progress_url']}", headers={"Last-Event-ID": bad})
        assert response.status_code == 400
        assert response.json()["code"] == "invalid_last_event_id"
