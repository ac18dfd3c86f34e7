"""GET /metrics over the real stack: the API's own counters (uploads by outcome, bytes, SSE
clients, events, replays, hub resyncs) and the cluster's, written by the worker and the
job-state script into Redis (jobs by final status, time per stage)."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import sse
from tests.helpers.audio import wav_bytes
from tests.helpers.jobs import create_job
from tests.helpers.wait import wait_until
from yousync.core.config import Settings
from yousync.core.jobs import JobStore
from yousync.core.stages import TIMED_STAGES

STAGES = tuple(stage.value for stage in TIMED_STAGES)
DASHBOARD = Path(__file__).resolve().parents[4] / "deploy" / "grafana" / "yousync-dashboard.json"


def scrape(base: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = httpx.get(f"{base}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def job_store(redis_url: str, redis_client: redis.Redis) -> Iterator[JobStore]:
    client = redis.Redis.from_url(redis_url)
    yield JobStore(client, Settings(redis_url=redis_url))
    client.close()


def test_metrics_when_job_completes_then_upload_job_stage_and_sse_metrics_move(
    pipeline: str, token_id: str
) -> None:
    before = scrape(pipeline)
    content = wav_bytes(2.0)
    rejected = httpx.post(
        f"{pipeline}/tokens/{token_id}/upload-audio",
        files={"file": ("notes.wav", b"just some text, not audio", "audio/wav")},
    )
    assert rejected.status_code == 415
    body = httpx.post(
        f"{pipeline}/tokens/{token_id}/upload-audio",
        files={"file": ("take.wav", content, "audio/wav")},
    ).json()
    events = list(sse.stream(f"{pipeline}{body['progress_url']}"))
    assert events[-1].json["status"] == "completed"
    # A reconnect that resumes after the first event: a replay of the rest.
    replayed = list(
        sse.stream(f"{pipeline}{body['progress_url']}", headers={"Last-Event-ID": events[0].id})
    )
    assert [e.id for e in replayed] == [e.id for e in events[1:]]

    after = scrape(pipeline)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("yousync_uploads_total", outcome="accepted") == 1
    assert delta("yousync_uploads_total", outcome="unsupported_audio_format") == 1
    assert delta("yousync_upload_received_bytes_total") == len(content)
    assert delta("yousync_sse_events_delivered_total") == len(events) + len(replayed)
    assert delta("yousync_sse_replays_total") == 1
    assert delta("yousync_sse_replayed_events_total") == len(replayed)
    assert value(after, "yousync_hub_resyncs_total", reason="overflow") >= 0
    assert value(after, "yousync_hub_connected") == 1
    assert (
        delta(
            "yousync_http_requests_total",
            method="POST",
            route="/tokens/{token_id}/upload-audio",
            status="202",
        )
        == 1
    )

    # Cluster-wide, from Redis (flushed for every test, so exact).
    assert value(after, "yousync_cluster_metrics_up") == 1
    assert value(after, "yousync_jobs_finished_total", status="completed") == 1
    assert value(after, "yousync_jobs_finished_total", status="failed") == 0
    for stage in STAGES:
        assert value(after, "yousync_job_stage_seconds_count", stage=stage) == 1, stage
        assert value(after, "yousync_job_stage_seconds_bucket", stage=stage, le="+Inf") == 1
    # The analysis server takes at least ANALYSIS_MIN_SECONDS (1 s) in the tests.
    assert value(after, "yousync_job_stage_seconds_sum", stage="analyzing") >= 1.0
    assert value(after, "yousync_job_stage_seconds_bucket", stage="analyzing", le="0.5") == 0

    # Every series the Grafana dashboard in deploy/ queries is one this endpoint exports.
    dashboard = json.loads(DASHBOARD.read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        for name in re.findall(r"yousync_[a-z_]+", target["expr"])
    }
    exported = {name for name, _ in after}
    assert queried and queried <= exported, queried - exported


def test_metrics_when_job_fails_then_counted_once_by_final_status(
    api_url: str, redis_url: str, token_id: str, job_store: JobStore
) -> None:
    job_id = create_job(redis_url, token_id)
    job_store.update(job_id, token_id, status="processing", progress=5, stage="preparing")
    error = {"code": "x", "message": "x", "retryable": False}
    job_store.update(job_id, token_id, status="failed", error=error)
    samples = scrape(api_url)
    assert value(samples, "yousync_jobs_finished_total", status="failed") == 1
    assert value(samples, "yousync_jobs_finished_total", status="completed") == 0


def wait_for_gauge(api_url: str, name: str, expected: float, why: str) -> None:
    wait_until(lambda: value(scrape(api_url), name) == expected, timeout=15, interval=0.1, what=why)


def test_metrics_when_sse_client_connects_and_leaves_then_gauge_follows(
    api_url: str, redis_url: str, token_id: str
) -> None:
    job_id = create_job(redis_url, token_id)
    host, port = api_url.removeprefix("http://").split(":")
    wait_for_gauge(api_url, "yousync_sse_clients", 0, "streams of earlier tests never left")
    # A raw socket: the client stays connected exactly as long as the test holds it open.
    with socket.create_connection((host, int(port)), timeout=10) as client:
        client.sendall(
            f"GET /tokens/analysis-progress/{job_id} HTTP/1.1\r\nHost: {host}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        received = b""
        while b"data:" not in received:
            chunk = client.recv(4096)
            assert chunk, received
            received += chunk
        assert value(scrape(api_url), "yousync_sse_clients") == 1
    wait_for_gauge(api_url, "yousync_sse_clients", 0, "the SSE client never left the hub")
