"""The whole pipeline over real HTTP: upload → Celery worker → S3 (moto server) → analysis server
→ result, followed live over SSE from a uvicorn process."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
import redis

from tests.helpers import sse
from tests.helpers.audio import encoded, wav_bytes


def upload(base: str, token_id: str, content: bytes, name: str, mime: str) -> httpx.Response:
    return httpx.post(
        f"{base}/tokens/{token_id}/upload-audio", files={"file": (name, content, mime)}, timeout=30
    )


def follow(base: str, path: str, **kwargs: object) -> list[sse.SseEvent]:
    return list(sse.stream(f"{base}{path}", **kwargs))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "mime", "make"),
    [
        ("line.wav", "audio/wav", lambda: wav_bytes(3.0)),
        ("line.mp3", "audio/mpeg", lambda: encoded(wav_bytes(3.0), "mp3")),
    ],
    ids=["wav", "mp3"],
)
def test_upload_when_audio_then_202_before_completion_and_sse_reaches_completed(
    pipeline: str,
    token_id: str,
    s3_client,  # type: ignore[no-untyped-def]
    s3_bucket: str,
    spool_dir: Path,
    name: str,
    mime: str,
    make,  # type: ignore[no-untyped-def]
) -> None:
    content = make()
    started = time.perf_counter()
    response = upload(pipeline, token_id, content, name, mime)
    time_to_202 = time.perf_counter() - started

    assert response.status_code == 202, response.text
    body = response.json()
    job_id = body["job_id"]
    assert body["status"] == "queued"
    assert body["task_id"] and body["message"]
    assert body["result_url"] == f"/tokens/analysis-result/{job_id}"
    assert body["progress_url"] == f"/tokens/analysis-progress/{job_id}"
    assert response.headers["location"] == body["result_url"]

    events = follow(pipeline, body["progress_url"])
    time_to_completed = time.perf_counter() - started
    snapshots = [event.json for event in events]

    # The answer came before the work was done (the analysis server takes ≥ 1 s here).
    assert time_to_202 < time_to_completed
    assert snapshots[-1]["status"] == "completed"
    assert snapshots[-1]["progress"] == 100
    progress = [snap["progress"] for snap in snapshots]
    assert progress == sorted(progress), progress
    assert all(snap["progress"] < 100 for snap in snapshots[:-1])
    ids = [event.id for event in events]
    assert len(set(ids)) == len(ids)
    assert all(event.event is None for event in events)  # default type: onmessage sees it
    assert 1500 <= (events[0].retry or 0) <= 4500  # jittered around SSE_RETRY_MS=3000

    result = httpx.get(f"{pipeline}{body['result_url']}").json()
    assert result == snapshots[-1]
    analysis = result["result"]
    assert analysis["duration_ms"] == pytest.approx(3000, abs=60)
    stored = analysis["stored"]
    assert stored["uploaded_bytes"] == len(content)

    bucket, _, key = result["s3_url"].removeprefix("s3://").partition("/")
    assert bucket == s3_bucket
    assert key == f"audio/{token_id}/{job_id}.flac"
    head = s3_client.head_object(Bucket=bucket, Key=key)
    assert head["ContentLength"] == stored["bytes"]
    assert not list(spool_dir.glob(f"{job_id}*")), "spool files are removed once completed"


def test_progress_when_reconnecting_with_last_event_id_then_no_gap_and_no_duplicate(
    pipeline: str, token_id: str, redis_client: redis.Redis
) -> None:
    body = upload(pipeline, token_id, wav_bytes(2.0), "a.wav", "audio/wav").json()
    url = f"{pipeline}{body['progress_url']}"

    first: list[sse.SseEvent] = []
    for event in sse.stream(url):
        first.append(event)
        if event.json["stage"] == "analyzing":
            break  # drop the connection mid-job
    assert first[-1].json["status"] == "processing"

    second = list(sse.stream(url, headers={"Last-Event-ID": first[-1].id or ""}))
    assert second[-1].json["status"] == "completed"

    received = [event.id for event in first + second]
    assert len(received) == len(set(received)), "no event delivered twice"
    stored = [
        entry_id for entry_id, _ in redis_client.xrange(f"yousync:job:{body['job_id']}:events")
    ]
    assert received == stored[stored.index(received[0]) :], "every event after the first, in order"

    # Reconnecting after the terminal event: 204 tells EventSource to stop.
    final = httpx.get(url, headers={"Last-Event-ID": received[-1]})
    assert final.status_code == 204


def test_progress_when_query_last_event_id_then_replays_after_it(
    pipeline: str, token_id: str
) -> None:
    body = upload(pipeline, token_id, wav_bytes(1.0), "a.wav", "audio/wav").json()
    events = follow(pipeline, body["progress_url"])
    replay = follow(pipeline, f"{body['progress_url']}?last_event_id={events[0].id}")
    assert [e.id for e in replay] == [e.id for e in events[1:]]


def test_result_when_wait_then_holds_until_completed(pipeline: str, token_id: str) -> None:
    body = upload(pipeline, token_id, wav_bytes(1.0), "a.wav", "audio/wav").json()
    snapshot = httpx.get(f"{pipeline}{body['result_url']}?wait=30", timeout=40).json()
    assert snapshot["status"] == "completed"
    assert snapshot["result"]["sample_rate"] == 16000


def test_upload_when_header_is_audio_but_body_is_not_then_job_fails_undecodable_and_nothing_stored(
    pipeline: str,
    token_id: str,
    s3_client,  # type: ignore[no-untyped-def]
    s3_bucket: str,
    spool_dir: Path,
) -> None:
    fake = b"OggS" + b"\x00" * 60 + b"this is not an ogg stream" * 200
    body = upload(pipeline, token_id, fake, "fake.ogg", "audio/ogg").json()
    snapshot = httpx.get(f"{pipeline}{body['result_url']}?wait=30", timeout=40).json()
    assert snapshot["status"] == "failed"
    assert snapshot["error"]["code"] == "undecodable_audio"
    assert snapshot["error"]["retryable"] is False
    listed = s3_client.list_objects_v2(Bucket=s3_bucket, Prefix=f"audio/{token_id}/")
    assert listed.get("KeyCount", 0) == 0
    assert not list(spool_dir.glob(f"{body['job_id']}*"))
