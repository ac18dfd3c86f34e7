"""The task's retry and failure paths with the real worker: transient errors retry with
backoff and end `failed` with `retryable: true`; a finished job ignores redelivery."""

from __future__ import annotations

import httpx
import pytest
import redis

from devtools import stack
from tests.helpers import sse
from tests.helpers.audio import wav_bytes
from yousync.core.config import Settings
from yousync.core.errors import PermanentError, TransientError
from yousync.core.jobs import JobStore
from yousync.core.storage import Storage
from yousync.worker.analysis_client import AnalysisClient
from yousync.worker.pipeline import Pipeline


def test_task_when_analysis_server_down_then_retries_and_fails_retryable(
    pipeline: str, token_id: str, analysis_service: stack.Proc
) -> None:
    analysis_service.stop()
    try:
        body = httpx.post(
            f"{pipeline}/tokens/{token_id}/upload-audio",
            files={"file": ("a.wav", wav_bytes(1.0), "audio/wav")},
        ).json()
        events = [event.json for event in sse.stream(f"{pipeline}{body['progress_url']}")]
    finally:
        analysis_service.start()
    final = events[-1]
    assert final["status"] == "failed"
    assert final["error"]["code"] == "analysis_unavailable"
    assert final["error"]["retryable"] is True
    retry_messages = [e["message"] for e in events if "retry" in e["message"]]
    assert any("retry 1" in m for m in retry_messages) and any(
        "retry 2" in m for m in retry_messages
    )
    assert final["s3_url"], "the upload finished before the analysis failed"


def test_pipeline_when_job_already_completed_then_redelivery_is_a_no_op(
    pipeline: str, token_id: str, redis_client: redis.Redis, backend_env: dict[str, str]
) -> None:
    body = httpx.post(
        f"{pipeline}/tokens/{token_id}/upload-audio",
        files={"file": ("a.wav", wav_bytes(1.0), "audio/wav")},
    ).json()
    done = httpx.get(f"{pipeline}{body['result_url']}?wait=30", timeout=40).json()
    assert done["status"] == "completed"
    events_before = redis_client.xlen(f"yousync:job:{body['job_id']}:events")

    settings = Settings(
        **{k.lower(): v for k, v in backend_env.items() if k.lower() in Settings.model_fields}
    )
    runner = Pipeline(
        settings=settings,
        store=JobStore(redis.Redis.from_url(settings.redis_url), settings),
        storage=Storage(settings),
        analysis=AnalysisClient(settings.analysis_server_url, timeout=5),
    )
    assert runner.run(body["job_id"]) == "completed"
    assert redis_client.xlen(f"yousync:job:{body['job_id']}:events") == events_before


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (503, TransientError),
        (500, TransientError),
        (429, TransientError),
        (422, PermanentError),
        (404, PermanentError),
    ],
)
def test_analysis_client_when_status_then_classified(status: int, error: type[Exception]) -> None:
    client = AnalysisClient("http://analysis.invalid", timeout=1)
    client._client = httpx.Client(  # a unit: the HTTP peer is a stub transport
        base_url="http://analysis.invalid",
        transport=httpx.MockTransport(
            lambda _: httpx.Response(status, json={"detail": "x", "code": "undecodable_audio"})
        ),
    )
    with pytest.raises(error) as raised:
        client.analyze({"key": "k"}, on_progress=lambda *_: None)
    if isinstance(raised.value, PermanentError):
        assert raised.value.code == "undecodable_audio"


def test_analysis_client_when_unreachable_then_transient() -> None:
    client = AnalysisClient(f"http://127.0.0.1:{stack.free_port()}", timeout=1)
    with pytest.raises(TransientError) as raised:
        client.analyze({"key": "k"}, on_progress=lambda *_: None)
    assert raised.value.code == "analysis_unavailable"
