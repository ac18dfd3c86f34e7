"""GET /metrics over the real stack: the API's own counters (uploads by outcome, bytes, SSE
clients, events, replays, hub resyncs), the cluster's, written by the worker and the
job-state script into Redis (jobs by final status, time per stage), and the broker's queues
(length, oldest message's age, live workers)."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
import yaml
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from devtools import stack
from tests.conftest import OwnBrokerApi
from tests.helpers import sse
from tests.helpers.api import upload_accepted
from tests.helpers.audio import wav_bytes
from tests.helpers.jobs import create_job
from tests.helpers.wait import wait_until
from yousync.core.broker import AUDIO_QUEUE, MAINTENANCE_QUEUE
from yousync.core.config import Settings
from yousync.core.jobs import JobStore
from yousync.core.stages import TIMED_STAGES

STAGES = tuple(stage.value for stage in TIMED_STAGES)
DEPLOY = Path(__file__).resolve().parents[4] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "yousync-dashboard.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
SERIES = re.compile(r"yousync_[a-z_]+")


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

    # Every series the Grafana dashboard and the alert rules in deploy/ query is one this
    # endpoint exports.
    dashboard = json.loads(DASHBOARD.read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        for name in SERIES.findall(target["expr"])
    }
    alerted = {
        name
        for group in yaml.safe_load(ALERTS.read_text())["groups"]
        for rule in group["rules"]
        for name in SERIES.findall(rule["expr"])
    }
    exported = {name for name, _ in after}
    assert queried and queried <= exported, queried - exported
    assert alerted and alerted <= exported, alerted - exported


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


def queue_gauges(samples: dict, queue: str) -> tuple[float, float, float]:  # type: ignore[type-arg]
    return (
        value(samples, "yousync_queue_length", queue=queue),
        value(samples, "yousync_queue_oldest_age_seconds", queue=queue),
        value(samples, "yousync_workers", queue=queue),
    )


def test_metrics_when_tasks_wait_with_no_worker_then_queue_gauges_rise_and_fall_once_consumed(
    api_on_own_broker: OwnBrokerApi,
    workdir: Path,
    analysis_service: stack.Proc,
    token_id: str,
) -> None:
    """Length and age of both queues rise while nobody consumes them (an upload through the
    API, a sweep as Beat sends it), fall to 0 once a worker does; the workers gauge counts that
    worker and drops once it is SIGKILLed (no clean exit: its heartbeat's TTL runs out)."""
    api = api_on_own_broker.api_url
    idle = scrape(api)
    assert value(idle, "yousync_broker_metrics_up") == 1
    for queue in (AUDIO_QUEUE, MAINTENANCE_QUEUE):
        assert queue_gauges(idle, queue) == (0, 0, 0), queue

    published = time.time()
    job = upload_accepted(api, token_id, wav_bytes(1.0))
    beat_like = Celery("beat-like", broker=api_on_own_broker.broker_url)
    beat_like.send_task("tasks.maintenance.sweep_spool", queue=MAINTENANCE_QUEUE)
    beat_like.close()
    sent = time.time()
    waiting = scrape(api)
    scraped = time.time()
    for queue in (AUDIO_QUEUE, MAINTENANCE_QUEUE):
        length, age, workers = queue_gauges(waiting, queue)
        assert (length, workers) == (1, 0), queue
        # Aged from the message's own publish time, not from when this scrape first saw it.
        assert 0 < age <= scraped - published, queue
    wait_until(
        lambda: queue_gauges(scrape(api), AUDIO_QUEUE)[1] >= scraped - sent + 0.5,
        timeout=10,
        what="the oldest message's age did not grow while it waited",
    )

    env = {**api_on_own_broker.env, "WORKER_HEARTBEAT_SECONDS": "0.5"}
    worker = stack.worker_proc(env, workdir, name="drain").start()
    try:
        wait_until(
            lambda: all(
                queue_gauges(scrape(api), queue) == (0, 0, 1)
                for queue in (AUDIO_QUEUE, MAINTENANCE_QUEUE)
            ),
            timeout=20,
            what="the worker did not drain both queues, or its heartbeat was not counted",
        )
        finished = httpx.get(f"{api}{job['result_url']}?wait=30", timeout=40).json()
        assert finished["status"] == "completed", finished
    finally:
        worker.kill()
    wait_until(
        lambda: all(
            queue_gauges(scrape(api), queue)[2] == 0 for queue in (AUDIO_QUEUE, MAINTENANCE_QUEUE)
        ),
        timeout=10,  # the heartbeat's TTL is 1.5 s
        what="a SIGKILLed worker was still counted",
    )


def test_metrics_when_the_broker_is_down_then_broker_up_is_0_and_the_scrape_still_answers(
    api_on_own_broker: OwnBrokerApi,
) -> None:
    api_on_own_broker.broker.kill()

    samples = scrape(api_on_own_broker.api_url)

    assert value(samples, "yousync_broker_metrics_up") == 0
    assert value(samples, "yousync_cluster_metrics_up") == 1  # job state is another server
    assert not any(name.startswith("yousync_queue_") for name, _ in samples)
