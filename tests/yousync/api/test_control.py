"""Cancel and retry with the real worker: a queued job never runs, a running one stops and
leaves nothing, a failed or cancelled one runs again with progress going on, never backwards."""

from __future__ import annotations

import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import redis
from celery import Celery

from devtools import stack
from tests.conftest import StagingPipeline
from tests.helpers import sse
from tests.helpers.audio import wav_bytes
from tests.helpers.jobs import sync_store
from tests.helpers.wait import wait_until
from tests.helpers.worker_log import task_ended
from yousync.core import keys


def upload(base: str, token_id: str, seconds: float = 2.0) -> dict[str, str]:
    response = httpx.post(
        f"{base}/tokens/{token_id}/upload-audio",
        files={"file": ("a.wav", wav_bytes(seconds), "audio/wav")},
    )
    assert response.status_code == 202, response.text
    return dict(response.json())


def final(base: str, body: dict[str, str]) -> dict[str, object]:
    return dict(httpx.get(f"{base}{body['result_url']}?wait=30", timeout=40).json())


def s3_keys(s3_client, bucket: str, token_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    listed = s3_client.list_objects_v2(Bucket=bucket, Prefix=f"audio/{token_id}/")
    return [item["Key"] for item in listed.get("Contents", [])]


def test_cancel_when_queued_then_never_runs_and_nothing_is_left(
    pipeline: str,
    token_id: str,
    worker_service: stack.Proc,
    spool_dir: Path,
    s3_client,
    s3_bucket: str,
    redis_client: redis.Redis,  # type: ignore[no-untyped-def]
) -> None:
    worker_service.signal_group(signal.SIGSTOP)
    try:
        body = upload(pipeline, token_id)
        cancelled = httpx.post(f"{pipeline}/tokens/analysis-cancel/{body['job_id']}")
        assert cancelled.status_code == 200
        assert cancelled.json()["status"] == "cancelled"
        assert not list(spool_dir.glob(f"{body['job_id']}*"))
    finally:
        worker_service.signal_group(signal.SIGCONT)
    wait_until(
        lambda: task_ended(worker_service, body["task_id"]),
        timeout=30,
        what="the worker done with the task (or its revocation); it must not run it",
    )
    events = redis_client.xrange(f"yousync:job:{body['job_id']}:events")
    assert [fields["status"] for _, fields in events] == ["queued", "cancelled"]
    assert s3_keys(s3_client, s3_bucket, token_id) == []


def multipart_uploads(s3_client, bucket: str, token_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    listed = s3_client.list_multipart_uploads(Bucket=bucket, Prefix=f"audio/{token_id}/")
    return [item["Key"] for item in listed.get("Uploads", [])]


def test_cancel_when_running_then_stops_at_next_write_and_cleans_up(
    pipeline: str,
    token_id: str,
    worker_service: stack.Proc,
    spool_dir: Path,
    s3_client,
    s3_bucket: str,  # type: ignore[no-untyped-def]
) -> None:
    body = upload(pipeline, token_id)
    for event in sse.stream(f"{pipeline}{body['progress_url']}"):
        if event.json["stage"] == "analyzing":
            response = httpx.post(f"{pipeline}/tokens/analysis-cancel/{body['job_id']}")
            assert response.status_code == 200
            break
    snapshot = final(pipeline, body)
    assert snapshot["status"] == "cancelled"
    # The analysis call returns (≥1 s); the worker's next write is refused and it cleans up.
    wait_until(
        lambda: task_ended(worker_service, body["task_id"]),
        timeout=30,
        what="the worker done with the cancelled task",
    )
    assert final(pipeline, body)["status"] == "cancelled"
    assert not list(spool_dir.glob(f"{body['job_id']}*"))
    assert multipart_uploads(s3_client, s3_bucket, token_id) == []
    # The stored object stays for a retry (it resumes at the analysis).
    assert s3_keys(s3_client, s3_bucket, token_id) == [snapshot["s3_url"].split("/", 3)[3]]
    again = httpx.post(f"{pipeline}/tokens/analysis-cancel/{body['job_id']}")
    assert again.status_code == 409 and again.json()["code"] == "job_finished"


def test_retry_when_failed_then_runs_again_from_analysis_and_progress_never_decreases(
    pipeline: str, token_id: str, analysis_service: stack.Proc, redis_client: redis.Redis
) -> None:
    analysis_service.stop()
    try:
        body = upload(pipeline, token_id, 1.0)
        failed = final(pipeline, body)
    finally:
        analysis_service.start()
    assert failed["status"] == "failed"
    retried = httpx.post(f"{pipeline}/tokens/analysis-retry/{body['job_id']}")
    assert retried.status_code == 202, retried.text
    assert retried.json()["status"] == "queued"
    assert retried.json()["progress"] == failed["progress"]
    done = final(pipeline, body)
    assert done["status"] == "completed"
    events = [f for _, f in redis_client.xrange(f"yousync:job:{body['job_id']}:events")]
    progress = [int(f["progress"]) for f in events]
    assert progress == sorted(progress)
    stages = [f["stage"] for f in events[[f["status"] for f in events].index("failed") :]]
    assert "uploading" not in stages and "preparing" not in stages, "resumed at analysis"


def test_retry_when_cancelled_then_completes(
    pipeline: str, token_id: str, worker_service: stack.Proc
) -> None:
    body = upload(pipeline, token_id)
    for event in sse.stream(f"{pipeline}{body['progress_url']}"):
        if event.json["stage"] == "analyzing":
            httpx.post(f"{pipeline}/tokens/analysis-cancel/{body['job_id']}")
            break
    wait_until(
        lambda: task_ended(worker_service, body["task_id"]),
        timeout=30,
        what="the worker done with the cancelled task",
    )
    retried = httpx.post(f"{pipeline}/tokens/analysis-retry/{body['job_id']}")
    assert retried.status_code == 202, retried.text
    assert final(pipeline, body)["status"] == "completed"


def test_retry_and_cancel_when_job_completed_or_unknown_then_409_or_404(
    pipeline: str, token_id: str
) -> None:
    body = upload(pipeline, token_id, 1.0)
    assert final(pipeline, body)["status"] == "completed"
    retry = httpx.post(f"{pipeline}/tokens/analysis-retry/{body['job_id']}")
    assert retry.status_code == 409 and retry.json()["code"] == "not_retryable"
    cancel = httpx.post(f"{pipeline}/tokens/analysis-cancel/{body['job_id']}")
    assert cancel.status_code == 409
    unknown = "5d0f5f4e-0000-4000-8000-000000000000"
    assert httpx.post(f"{pipeline}/tokens/analysis-retry/{unknown}").status_code == 404
    assert httpx.post(f"{pipeline}/tokens/analysis-cancel/{unknown}").status_code == 404


def test_retry_when_failed_past_the_old_hour_of_spool_retention_then_the_input_is_still_there(
    staging_pipeline: StagingPipeline,
    token_id: str,
    worker_service: stack.Proc,
    celery_client: Celery,
    redis_client: redis.Redis,
    redis_url: str,
) -> None:
    """A failed job's input (spool file or staged object) lives as long as its record
    (RESULT_RETENTION_SECONDS), not the one hour SPOOL_RETENTION_SECONDS used to give it: the
    sweeps keep it, and a retry two hours after the failure prepares from it and completes."""
    base = staging_pipeline.url
    worker_service.signal_group(signal.SIGSTOP)
    try:
        body = upload(base, token_id, 1.0)
        job_id = body["job_id"]
        # Failed before anything was stored (as the stuck-job sweep ends a job), 2 h ago.
        sync_store(redis_url).update(
            job_id,
            token_id,
            status="failed",
            error={"code": "stuck", "message": "stopped", "retryable": True},
        )
        two_hours_ago = datetime.now(UTC) - timedelta(hours=2)
        redis_client.hset(
            keys.job(job_id), "updated_at", two_hours_ago.isoformat().replace("+00:00", "Z")
        )
    finally:
        worker_service.signal_group(signal.SIGCONT)
    wait_until(
        lambda: task_ended(worker_service, body["task_id"]),
        timeout=30,
        what="the first delivery ended (the job was failed already)",
    )
    for sweep in ("sweep_spool", "sweep_staged_uploads"):
        celery_client.send_task(
            f"tasks.maintenance.{sweep}", kwargs={"orphan_grace_seconds": 0}, queue="maintenance"
        ).get(timeout=30)
    assert staging_pipeline.upload_left(job_id), "the failed job's input is kept"

    retried = httpx.post(f"{base}/tokens/analysis-retry/{job_id}")

    assert retried.status_code == 202, retried.text
    done = final(base, body)
    assert done["status"] == "completed", done
    assert "preparing" in [f["stage"] for _, f in redis_client.xrange(keys.job_events(job_id))]
