"""Beat's maintenance tasks, run by the real worker (sent over the real broker, results read
back), and Celery Beat itself sending them on its schedule."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from devtools import stack
from tests.helpers.jobs import create_job
from tests.helpers.wait import wait_until
from yousync.core import keys
from yousync.core.config import Settings
from yousync.core.jobs import JobStore
from yousync.worker.celery_app import MAINTENANCE_TASKS


@pytest.fixture
def store(redis_url: str, redis_client: redis.Redis) -> Iterator[JobStore]:
    client = redis.Redis.from_url(redis_url)
    yield JobStore(client, Settings(redis_url=redis_url))
    client.close()


def run(app: Celery, name: str, **kwargs: Any) -> Any:
    result = app.send_task(f"tasks.maintenance.{name}", kwargs=kwargs, queue="maintenance")
    return result.get(timeout=30)


def touch(path: Path, *, age_seconds: float = 0.0) -> Path:
    path.write_bytes(b"RIFF....WAVE")
    if age_seconds:
        stamp = time.time() - age_seconds
        os.utime(path, (stamp, stamp))
    return path


def hours_ago(hours: float) -> str:
    stamp = datetime.now(UTC) - timedelta(hours=hours)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_sweep_spool_when_jobs_completed_cancelled_or_expired_then_only_their_files_go(
    celery_client: Celery,
    store: JobStore,
    redis_url: str,
    redis_client: redis.Redis,
    spool_dir: Path,
    token_id: str,
) -> None:
    completed = create_job(redis_url, token_id)
    store.update(completed, token_id, status="completed", progress=100, stage="done")
    failed_recently = create_job(redis_url, token_id)
    error = {"code": "analysis_unavailable", "message": "down", "retryable": True}
    store.update(failed_recently, token_id, status="failed", error=error)
    # Past the old one-hour spool retention, but its record lives: its input stays for a retry.
    failed_long_ago = create_job(redis_url, token_id)
    store.update(failed_long_ago, token_id, status="failed", error=error)
    redis_client.hset(keys.job(failed_long_ago), "updated_at", hours_ago(2))
    cancelled = create_job(redis_url, token_id)
    store.update(cancelled, token_id, status="cancelled")
    running = create_job(redis_url, token_id)
    store.update(running, token_id, status="processing", progress=20, stage="uploading")
    expired_old, arriving = str(uuid.uuid4()), str(uuid.uuid4())  # no job records
    # A newer release's record (a stage this one does not know), finished long ago: kept, and
    # the sweep goes on with the others.
    unreadable = create_job(redis_url, token_id)
    store.update(unreadable, token_id, status="completed", progress=100, stage="done")
    redis_client.hset(keys.job(unreadable), "stage", "rehearsing")

    doomed = [
        touch(spool_dir / completed),
        touch(spool_dir / f"{completed}.prepared.flac"),
        touch(spool_dir / cancelled),
        touch(spool_dir / expired_old, age_seconds=7200),
    ]
    kept = [
        touch(spool_dir / failed_recently),
        touch(spool_dir / failed_long_ago),
        touch(spool_dir / running),
        touch(spool_dir / f"{running}.prepared.flac"),
        touch(spool_dir / arriving),  # an upload still being received: no record yet
        touch(spool_dir / unreadable),
        touch(spool_dir / "not-a-job-file.txt", age_seconds=7200),
    ]
    try:
        result = run(celery_client, "sweep_spool")
        assert not [path.name for path in doomed if path.exists()]
        assert all(path.exists() for path in kept)
        assert {path.name for path in doomed} <= set(result["deleted"])
        assert not {path.name for path in kept} & set(result["deleted"])

        # The failed job's record gone (expired, deleted): its file goes, with no grace.
        redis_client.delete(keys.job(failed_long_ago))
        result = run(celery_client, "sweep_spool", orphan_grace_seconds=0)
        assert failed_long_ago in result["deleted"]
        assert (spool_dir / failed_recently).exists() and (spool_dir / running).exists()
    finally:
        for path in kept:
            path.unlink(missing_ok=True)


def test_sweep_staged_uploads_when_jobs_finished_or_expired_then_only_their_objects_go(
    celery_client: Celery,
    store: JobStore,
    redis_url: str,
    redis_client: redis.Redis,
    s3_client: Any,
    s3_bucket: str,
    token_id: str,
) -> None:
    completed = create_job(redis_url, token_id)
    store.update(completed, token_id, status="completed", progress=100, stage="done")
    error = {"code": "analysis_unavailable", "message": "down", "retryable": True}
    failed_recently = create_job(redis_url, token_id)
    store.update(failed_recently, token_id, status="failed", error=error)
    failed_long_ago = create_job(redis_url, token_id)
    store.update(failed_long_ago, token_id, status="failed", error=error)
    redis_client.hset(keys.job(failed_long_ago), "updated_at", hours_ago(2))
    cancelled_long_ago = create_job(redis_url, token_id)
    store.update(cancelled_long_ago, token_id, status="cancelled")
    redis_client.hset(keys.job(cancelled_long_ago), "updated_at", hours_ago(2))
    running = create_job(redis_url, token_id)
    store.update(running, token_id, status="processing", progress=20, stage="uploading")
    no_record = str(uuid.uuid4())  # expired, or its API is creating the record right now

    def stage(name: str) -> str:
        key = f"incoming/{name}"
        s3_client.put_object(Bucket=s3_bucket, Key=key, Body=b"RIFF....WAVE")
        return key

    def staged() -> set[str]:
        listed = s3_client.list_objects_v2(Bucket=s3_bucket, Prefix="incoming/")
        return {found["Key"] for found in listed.get("Contents", [])}

    doomed = {stage(completed), stage(cancelled_long_ago)}
    kept = {
        stage(failed_recently),
        stage(failed_long_ago),
        stage(running),
        stage(no_record),
        stage("not-a-job"),
    }
    try:
        result = run(celery_client, "sweep_staged_uploads")
        assert doomed <= set(result["deleted"]) and not doomed & staged()
        assert kept <= staged()

        # With no grace, the object without a record goes; the running job's and a name that
        # is not a job id stay.
        result = run(celery_client, "sweep_staged_uploads", orphan_grace_seconds=0)
        assert f"incoming/{no_record}" in result["deleted"]
        assert {f"incoming/{running}", "incoming/not-a-job"} <= staged()
    finally:
        for key in kept:
            s3_client.delete_object(Bucket=s3_bucket, Key=key)


def test_sweep_staged_uploads_when_a_staging_multipart_upload_stopped_then_aborted(
    celery_client: Celery, s3_client: Any, s3_bucket: str
) -> None:
    key = f"incoming/{uuid.uuid4()}"
    upload = s3_client.create_multipart_upload(Bucket=s3_bucket, Key=key)
    s3_client.upload_part(
        Bucket=s3_bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"x" * 1024
    )

    def open_uploads() -> list[str]:
        listed = s3_client.list_multipart_uploads(Bucket=s3_bucket, Prefix=key)
        return [found["UploadId"] for found in listed.get("Uploads", [])]

    # A part just arrived: an upload still streaming in, whatever the upload's start says.
    result = run(celery_client, "sweep_staged_uploads")
    assert key not in result["aborted"] and open_uploads() == [upload["UploadId"]]

    result = run(celery_client, "sweep_staged_uploads", orphan_grace_seconds=0)
    assert key in result["aborted"] and open_uploads() == []


def test_mark_stuck_jobs_when_silent_past_the_limit_then_failed_stuck_with_an_event(
    celery_client: Celery,
    store: JobStore,
    redis_url: str,
    redis_client: redis.Redis,
    token_id: str,
) -> None:
    silent = create_job(redis_url, token_id)
    store.update(silent, token_id, status="processing", progress=40, stage="analyzing")
    waiting = create_job(redis_url, token_id)  # queued

    def silent_for(job_id: str) -> float:
        """Seconds since the job's last write, by Redis's clock (as the task measures it)."""
        seconds, micros = redis_client.time()
        return seconds + micros / 1e6 - float(redis_client.zscore(keys.ACTIVE_JOBS, job_id))

    wait_until(
        lambda: min(silent_for(silent), silent_for(waiting)) > 1.0,
        timeout=10,
        what="both jobs silent past the 1 s limit",
    )
    busy = create_job(redis_url, token_id)
    store.update(busy, token_id, status="processing", progress=10, stage="preparing")
    done = create_job(redis_url, token_id)
    store.update(done, token_id, status="completed", progress=100, stage="done")

    marked = run(celery_client, "mark_stuck_jobs", processing_seconds=1.0)
    assert marked == [silent]
    job = redis_client.hgetall(keys.job(silent))
    assert job["status"] == "failed"
    assert '"code":"stuck"' in job["error"] and '"retryable":true' in job["error"]
    (_, last_event), *_ = redis_client.xrevrange(keys.job_events(silent), count=1)
    assert last_event["status"] == "failed"  # SSE clients hear about it like any other event
    assert redis_client.hget(keys.job(busy), "status") == "processing"
    assert redis_client.hget(keys.job(waiting), "status") == "queued"
    assert redis_client.hget(keys.job(done), "status") == "completed"

    # A queued job has its own, longer limit (a backlog is not a fault).
    assert run(celery_client, "mark_stuck_jobs", processing_seconds=1.0, queued_seconds=1.0) == [
        waiting
    ]
    # Nothing left to mark: running it again changes nothing (Beat may overlap).
    assert run(celery_client, "mark_stuck_jobs", processing_seconds=1.0, queued_seconds=1.0) == []


THIRTY_YEARS = 30 * 365 * 86400


def test_abort_stale_multipart_uploads_when_older_than_limit_then_aborted(
    celery_client: Celery,
    s3_client: Any,
    s3_bucket: str,
    token_id: str,
) -> None:
    ours = s3_client.create_multipart_upload(Bucket=s3_bucket, Key=f"audio/{token_id}/x.flac")
    foreign = s3_client.create_multipart_upload(Bucket=s3_bucket, Key=f"other/{token_id}.bin")

    def open_uploads(prefix: str) -> list[str]:
        listed = s3_client.list_multipart_uploads(Bucket=s3_bucket, Prefix=prefix)
        return [upload["UploadId"] for upload in listed.get("Uploads", [])]

    try:
        # moto reports every multipart upload as initiated on 2010-11-10: younger than a
        # 30-year limit, far older than the default one day.
        result = run(
            celery_client, "abort_stale_multipart_uploads", older_than_seconds=THIRTY_YEARS
        )
        assert f"audio/{token_id}/x.flac" not in result["aborted"] and result["kept"] >= 1
        assert open_uploads(f"audio/{token_id}/") == [ours["UploadId"]]

        result = run(celery_client, "abort_stale_multipart_uploads")
        assert f"audio/{token_id}/x.flac" in result["aborted"]
        assert open_uploads(f"audio/{token_id}/") == []
        assert open_uploads(f"other/{token_id}") == [foreign["UploadId"]]  # not ours
    finally:
        s3_client.abort_multipart_upload(
            Bucket=s3_bucket, Key=f"other/{token_id}.bin", UploadId=foreign["UploadId"]
        )


def test_sweep_old_audio_when_older_than_the_retention_then_deleted_and_when_0_then_kept(
    celery_client: Celery, s3_client: Any, s3_bucket: str, token_id: str
) -> None:
    old_key, new_key = f"audio/{token_id}/old.flac", f"audio/{token_id}/new.flac"
    s3_client.put_object(Bucket=s3_bucket, Key=old_key, Body=b"fLaC")
    time.sleep(4)  # S3 stamps LastModified in whole seconds: 4 s apart, stamps >= 3 s apart
    s3_client.put_object(Bucket=s3_bucket, Key=new_key, Body=b"fLaC")
    staged = f"incoming/{uuid.uuid4()}"
    s3_client.put_object(Bucket=s3_bucket, Key=staged, Body=b"RIFF")

    def stored() -> set[str]:
        listed = s3_client.list_objects_v2(Bucket=s3_bucket, Prefix=f"audio/{token_id}/")
        return {found["Key"] for found in listed.get("Contents", [])}

    try:
        # AUDIO_RETENTION_DAYS=0, the default: kept for good.
        assert run(celery_client, "sweep_old_audio")["deleted"] == []
        assert stored() == {old_key, new_key}
        # Fractional days (here 2 s): only the older object is past it; uploads staged under
        # incoming/ are not the sweep's.
        result = run(celery_client, "sweep_old_audio", older_than_days=2 / 86400)
        assert old_key in result["deleted"] and new_key not in result["deleted"]
        assert stored() == {new_key}
        assert s3_client.head_object(Bucket=s3_bucket, Key=staged)
    finally:
        for key in (new_key, staged):
            s3_client.delete_object(Bucket=s3_bucket, Key=key)


def test_retry_pending_deletions_when_s3_answers_then_objects_under_each_prefix_go(
    celery_client: Celery, s3_client: Any, s3_bucket: str, token_id: str, redis_client: Any
) -> None:
    """What a DELETE left while S3 was down: the job's objects (every extension) and an
    unfinished multipart upload; a neighbouring job's object under the same token stays."""
    job, other = str(uuid.uuid4()), str(uuid.uuid4())
    mine = [f"audio/{token_id}/{job}.flac", f"audio/{token_id}/{job}.mp3"]
    for key in (*mine, f"audio/{token_id}/{other}.flac"):
        s3_client.put_object(Bucket=s3_bucket, Key=key, Body=b"fLaC")
    s3_client.create_multipart_upload(Bucket=s3_bucket, Key=f"audio/{token_id}/{job}.wav")
    redis_client.sadd(keys.PENDING_DELETIONS, f"audio/{token_id}/{job}.")
    try:
        result = run(celery_client, "retry_pending_deletions")

        assert set(mine) <= set(result["deleted"])
        listed = s3_client.list_objects_v2(Bucket=s3_bucket, Prefix=f"audio/{token_id}/")
        assert {found["Key"] for found in listed.get("Contents", [])} == {
            f"audio/{token_id}/{other}.flac"
        }
        uploads = s3_client.list_multipart_uploads(Bucket=s3_bucket, Prefix=f"audio/{token_id}/")
        assert uploads.get("Uploads", []) == []
        assert not redis_client.sismember(keys.PENDING_DELETIONS, f"audio/{token_id}/{job}.")
    finally:
        s3_client.delete_object(Bucket=s3_bucket, Key=f"audio/{token_id}/{other}.flac")


def test_beat_when_running_then_sends_the_sweeps_on_schedule(
    backend_env: dict[str, str],
    workdir: Path,
    worker_service: stack.Proc,
    redis_client: redis.Redis,
    spool_dir: Path,
) -> None:
    orphan = touch(spool_dir / str(uuid.uuid4()), age_seconds=7200)
    beat = stack.beat_proc({**backend_env, "MAINTENANCE_INTERVAL_SECONDS": "1"}, workdir).start()
    try:
        stack.wait_until(lambda: not orphan.exists(), timeout=20, what="Beat's spool sweep")
        # One tick sends the sweeps one after another: the spool sweep may run before the last.
        stack.wait_until(
            lambda: all(
                f"Sending due task {task}" in beat.log_tail(200) for task in MAINTENANCE_TASKS
            ),
            timeout=20,
            what="every sweep sent",
        )
    finally:
        beat.stop()
    log = beat.log_tail(200)
    for task in MAINTENANCE_TASKS:
        assert f"Sending due task {task}" in log, log
