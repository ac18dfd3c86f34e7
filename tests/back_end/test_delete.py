"""DELETE /tokens/analysis-result/{job_id} on the whole stack (uvicorn, Celery worker, Redis,
moto S3 behind a link the test can slow down or cut): during the worker's upload to S3, during
the analysis, after completion, of a deduplicated job and of its original, and with S3 down.
After each, nothing of the deleted job is left in S3, the spool or Redis, and what another job
still holds is intact."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from devtools import stack
from tests.helpers import sse
from tests.helpers.api import upload_accepted
from tests.helpers.audio import wav_bytes, white_noise_wav
from tests.helpers.mini_stack import (
    SLOW_S3_BYTES_PER_SECOND,
    SLOW_S3_UPLOAD_MB,
    MiniStack,
    mini_stacks,
    slow_s3_settings,
)
from tests.helpers.proxy import CuttableProxy
from tests.helpers.s3 import object_keys, open_upload_keys
from tests.helpers.wait import wait_until
from tests.helpers.worker_log import task_ended
from yousync.core import keys
from yousync.core.config import Settings

UNREACHABLE_CALLBACK = "http://127.0.0.3:9/hooks"


@dataclass
class DeleteStack:
    mini: MiniStack
    proxy: CuttableProxy  # between the worker/API and S3

    @property
    def api(self) -> str:
        return self.mini.api_url

    @property
    def worker(self) -> stack.Proc:
        return self.mini.procs[1]


@pytest.fixture(scope="module")
def delete_stack(
    stack_env: dict[str, str], workdir: Path, s3_service: stack.Proc
) -> Iterator[DeleteStack]:
    proxy = CuttableProxy(int(s3_service.name.split(":")[1]))
    # An analysis server of its own that takes 3 s at least: room to delete a job mid-analysis.
    analysis = stack.analysis_proc({**stack_env, "ANALYSIS_MIN_SECONDS": "3"}, workdir).start()
    try:
        with mini_stacks(stack_env, workdir) as make:
            mini = make(
                ANALYSIS_SERVER_URL=f"http://127.0.0.1:{analysis.name.split(':')[1]}",
                # Every end owes a delivery, and none is sent (no callbacks worker here, and
                # nothing listens there): a DELETE must remove the job's pending deliveries.
                CALLBACK_URL=UNREACHABLE_CALLBACK,
                **slow_s3_settings(proxy.url),
            )
            yield DeleteStack(mini, proxy)
    finally:
        analysis.kill()
        proxy.close()


@pytest.fixture
def ds(delete_stack: DeleteStack) -> Iterator[DeleteStack]:
    delete_stack.proxy.throttle(None)
    delete_stack.proxy.restore()
    yield delete_stack
    delete_stack.proxy.throttle(None)
    delete_stack.proxy.restore()


def delete(api: str, job_id: str) -> httpx.Response:
    return httpx.delete(f"{api}/tokens/analysis-result/{job_id}", timeout=60)


def redis_traces(client: redis.Redis, job_id: str) -> list[str]:
    """Every key naming the job, and the job's entries (but its tombstone) in token Streams."""
    found = sorted(str(key) for key in client.scan_iter(match=f"*{job_id}*"))
    for stream in client.scan_iter(match="yousync:token:*:events"):
        for _, fields in client.xrange(stream):
            if fields.get("job_id") == job_id and fields.get("status") != "deleted":
                found.append(f"{stream} entry {fields.get('status')}")
    if client.zscore(keys.ACTIVE_JOBS, job_id) is not None:
        found.append(keys.ACTIVE_JOBS)
    # Deliveries are `<job_id>.<n>` (the job's n-th end), never the bare id.
    for name in (keys.CALLBACKS_DUE, keys.CALLBACKS_DEAD):
        found += [f"{name} {member}" for member in deliveries(client, name, job_id)]
    return found


def deliveries(client: redis.Redis, name: str, job_id: str) -> list[str]:
    return [str(m) for m in client.zrange(name, 0, -1) if str(m).startswith(f"{job_id}.")]


def s3_traces(s3_client: Any, bucket: str, token_id: str, job_id: str) -> set[str]:
    prefixes = (f"audio/{token_id}/{job_id}", f"incoming/{job_id}")
    return {
        *(key for prefix in prefixes for key in object_keys(s3_client, bucket, prefix)),
        *(
            f"upload:{key}"
            for prefix in prefixes
            for key in open_upload_keys(s3_client, bucket, prefix)
        ),
    }


def assert_nothing_left(
    ds: DeleteStack, s3_client: Any, bucket: str, spool_dir: Path, token_id: str, job_id: str
) -> None:
    wait_until(
        lambda: not s3_traces(s3_client, bucket, token_id, job_id),
        timeout=30,
        what="nothing of the job in S3",
    )
    assert not list(spool_dir.glob(f"{job_id}*")), "nothing of it in the spool"
    assert redis_traces(ds.mini.redis, job_id) == []
    pending = ds.mini.redis.smembers(keys.PENDING_DELETIONS)
    assert not [prefix for prefix in pending if job_id in prefix], "no deletion left pending"
    answer = delete(ds.api, job_id)
    assert answer.status_code == 404 and answer.json()["code"] == "job_not_found"


def follow_until(ds: DeleteStack, body: dict[str, Any], stage: str, low: int = 0) -> None:
    for event in sse.stream(f"{ds.api}{body['progress_url']}", timeout=60):
        if event.json["stage"] == stage and event.json["progress"] > low:
            return
    raise AssertionError(f"the job ended without being seen at {stage}")


def analysing_with_a_stream(
    ds: DeleteStack, token_id: str
) -> tuple[dict[str, Any], list[sse.SseEvent], threading.Thread]:
    """A 3 s take being analysed, and a stream of it open (its first event received)."""
    body = upload_accepted(ds.api, token_id, wav_bytes(3.0))
    follow_until(ds, body, "analyzing")
    job_events: list[sse.SseEvent] = []
    reader = sse.collect(f"{ds.api}{body['progress_url']}", job_events, timeout=30)
    wait_until(lambda: bool(job_events), timeout=10, what="the stream's first event")
    return body, job_events, reader


def test_delete_when_the_worker_uploads_to_s3_then_upload_aborted_and_nothing_is_left(
    ds: DeleteStack, token_id: str, s3_client: Any, s3_bucket: str, spool_dir: Path
) -> None:
    ds.proxy.throttle(SLOW_S3_BYTES_PER_SECOND)
    body = upload_accepted(ds.api, token_id, white_noise_wav(SLOW_S3_UPLOAD_MB))
    job_id = body["job_id"]
    follow_until(ds, body, "uploading", low=10)
    assert open_upload_keys(s3_client, s3_bucket, f"audio/{token_id}/{job_id}")

    answer = delete(ds.api, job_id)

    assert answer.status_code == 204, answer.text
    assert answer.content == b""
    wait_until(lambda: task_ended(ds.worker, body["task_id"]), timeout=30, what="task ended")
    assert_nothing_left(ds, s3_client, s3_bucket, spool_dir, token_id, job_id)


def test_delete_when_analysing_then_open_streams_end_with_deleted_and_nothing_is_left(
    ds: DeleteStack, token_id: str, s3_client: Any, s3_bucket: str, spool_dir: Path
) -> None:
    body, job_events, reader = analysing_with_a_stream(ds, token_id)
    job_id = body["job_id"]
    assert object_keys(s3_client, s3_bucket, f"audio/{token_id}/{job_id}"), "stored already"

    assert delete(ds.api, job_id).status_code == 204

    reader.join(timeout=30)
    assert not reader.is_alive(), "the job's stream ended"
    last = job_events[-1].json
    assert last["status"] == "deleted" and last["job_id"] == job_id
    assert last["result"] is None and last["s3_url"] is None
    wait_until(lambda: task_ended(ds.worker, body["task_id"]), timeout=30, what="task ended")
    assert_nothing_left(ds, s3_client, s3_bucket, spool_dir, token_id, job_id)


def completed_job(ds: DeleteStack, token_id: str, content: bytes) -> dict[str, Any]:
    body = upload_accepted(ds.api, token_id, content)
    final = httpx.get(f"{ds.api}{body['result_url']}?wait=60", timeout=70).json()
    assert final["status"] == "completed", final
    # Its delivery ends after the completing write (the delivery count, the upload's removal).
    wait_until(lambda: task_ended(ds.worker, body["task_id"]), timeout=30, what="task ended")
    return body


def test_delete_when_completed_then_204_then_404_and_nothing_is_left(
    ds: DeleteStack, token_id: str, s3_client: Any, s3_bucket: str, spool_dir: Path
) -> None:
    body = completed_job(ds, token_id, wav_bytes(1.0))
    job_id = body["job_id"]
    assert object_keys(s3_client, s3_bucket, f"audio/{token_id}/{job_id}")
    assert deliveries(ds.mini.redis, keys.CALLBACKS_DUE, job_id) == [f"{job_id}.1"]
    assert ds.mini.redis.exists(keys.callback(f"{job_id}.1"), keys.job_callbacks(job_id)) == 2

    assert delete(ds.api, job_id).status_code == 204

    assert not ds.mini.redis.exists(keys.callback(f"{job_id}.1"), keys.job_callbacks(job_id))

    assert_nothing_left(ds, s3_client, s3_bucket, spool_dir, token_id, job_id)
    gone = httpx.get(f"{ds.api}{body['result_url']}")
    assert gone.status_code == 404
    # The same recording again is analysed anew: the dedupe entry went with the job.
    again = upload_accepted(ds.api, token_id, wav_bytes(1.0))
    assert again.get("deduplicated") is not True


def test_delete_of_deduplicated_jobs_and_their_original_then_the_object_goes_with_the_last(
    ds: DeleteStack, token_id: str, s3_client: Any, s3_bucket: str, spool_dir: Path
) -> None:
    content = wav_bytes(1.5)
    original = completed_job(ds, token_id, content)
    copy_1 = upload_accepted(ds.api, token_id, content)
    copy_2 = upload_accepted(ds.api, token_id, content)
    assert copy_1["deduplicated"] and copy_2["deduplicated"]
    stored = object_keys(s3_client, s3_bucket, f"audio/{token_id}/{original['job_id']}")
    assert len(stored) == 1

    # A deduplicated job: only its own record goes; the original's object stays.
    assert delete(ds.api, copy_1["job_id"]).status_code == 204
    assert_nothing_left(ds, s3_client, s3_bucket, spool_dir, token_id, copy_1["job_id"])
    assert object_keys(s3_client, s3_bucket, f"audio/{token_id}/") == stored
    assert httpx.get(f"{ds.api}{original['result_url']}").json()["status"] == "completed"

    # The original while a deduplicated job lives: its record goes, the object stays.
    assert delete(ds.api, original["job_id"]).status_code == 204
    assert redis_traces(ds.mini.redis, original["job_id"]) == [
        f"yousync:job:{original['job_id']}:dedups"  # names the job that still holds the object
    ]
    assert object_keys(s3_client, s3_bucket, f"audio/{token_id}/") == stored
    snapshot = httpx.get(f"{ds.api}{copy_2['result_url']}").json()
    assert snapshot["status"] == "completed" and snapshot["s3_url"].endswith(next(iter(stored)))

    # The last holder: the object goes with it, and nothing of either job is left.
    assert delete(ds.api, copy_2["job_id"]).status_code == 204
    assert_nothing_left(ds, s3_client, s3_bucket, spool_dir, token_id, copy_2["job_id"])
    assert_nothing_left(ds, s3_client, s3_bucket, spool_dir, token_id, original["job_id"])
    assert object_keys(s3_client, s3_bucket, f"audio/{token_id}/") == set()


def sweep_pending_deletions(ds: DeleteStack) -> dict[str, Any]:
    """Sends the Beat sweep to the stack's worker, as Beat does, and waits for its answer."""
    from celery import Celery

    port = ds.mini.procs[0].name.split(":")[1]
    broker = Settings(redis_url=f"redis://127.0.0.1:{port}/0").broker_url
    app = Celery("test-client", broker=broker, backend=broker)
    app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")
    try:
        result = app.send_task(
            "tasks.maintenance.retry_pending_deletions", queue="maintenance"
        ).get(timeout=60)
    finally:
        app.close()
    return dict(result)


def assert_deleted_with_storage_pending(
    ds: DeleteStack, answer: httpx.Response, body: dict[str, Any], token_id: str
) -> None:
    """202: the job is gone from Redis at once; its object waits for S3."""
    job_id = body["job_id"]
    assert answer.status_code == 202, answer.text
    assert answer.json() == {"job_id": job_id, "status": "deleted", "storage_cleanup": "pending"}
    assert redis_traces(ds.mini.redis, job_id) == []
    assert httpx.get(f"{ds.api}{body['result_url']}").status_code == 404
    assert f"audio/{token_id}/{job_id}." in ds.mini.redis.smembers(keys.PENDING_DELETIONS)


def test_delete_when_s3_is_down_then_202_the_job_is_gone_and_the_sweep_deletes_its_objects_later(
    ds: DeleteStack, token_id: str, s3_client: Any, s3_bucket: str, spool_dir: Path
) -> None:
    body = completed_job(ds, token_id, wav_bytes(1.0))
    job_id = body["job_id"]
    ds.proxy.cut()

    answer = delete(ds.api, job_id)

    assert_deleted_with_storage_pending(ds, answer, body, token_id)
    stored = object_keys(s3_client, s3_bucket, f"audio/{token_id}/{job_id}")
    assert stored, "S3 was down: the object is still there"
    # Still down: the sweep keeps the prefix for its next run.
    assert sweep_pending_deletions(ds)["pending"] >= 1
    assert object_keys(s3_client, s3_bucket, f"audio/{token_id}/{job_id}") == stored

    ds.proxy.restore()
    swept = sweep_pending_deletions(ds)

    assert set(swept["deleted"]) >= stored
    assert_nothing_left(ds, s3_client, s3_bucket, spool_dir, token_id, job_id)


def test_delete_when_analysing_and_s3_is_down_then_202_the_streams_end_and_the_sweep_cleans_up(
    ds: DeleteStack, token_id: str, s3_client: Any, s3_bucket: str, spool_dir: Path
) -> None:
    """The running job is not left frozen (record `processing`, every write refused): its
    record and events go, its stream ends with `deleted`, its worker stops."""
    body, job_events, reader = analysing_with_a_stream(ds, token_id)
    job_id = body["job_id"]
    ds.proxy.cut()

    answer = delete(ds.api, job_id)

    assert_deleted_with_storage_pending(ds, answer, body, token_id)
    reader.join(timeout=30)
    assert not reader.is_alive(), "the job's stream ended"
    assert job_events[-1].json["status"] == "deleted"
    wait_until(lambda: task_ended(ds.worker, body["task_id"]), timeout=60, what="task ended")
    assert not ds.mini.redis.zscore(keys.ACTIVE_JOBS, job_id)

    ds.proxy.restore()
    sweep_pending_deletions(ds)

    assert_nothing_left(ds, s3_client, s3_bucket, spool_dir, token_id, job_id)


def test_delete_when_the_job_is_unknown_then_404_json(ds: DeleteStack) -> None:
    answer = delete(ds.api, "00000000-0000-4000-8000-000000000000")
    assert answer.status_code == 404
    assert answer.json()["code"] == "job_not_found"
    bad = delete(ds.api, "not-a-job-id")
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_job_id"


def test_delete_when_queued_and_staged_in_s3_then_the_staged_object_goes_and_it_never_runs(
    s3_staging_api: stack.Proc,
    pipeline: str,
    worker_service: stack.Proc,
    redis_client: redis.Redis,
    token_id: str,
    s3_client: Any,
    s3_bucket: str,
    spool_dir: Path,
) -> None:
    api = f"http://127.0.0.1:{s3_staging_api.name.split(':')[1]}"
    worker_service.signal_group(signal.SIGSTOP)
    try:
        body = upload_accepted(api, token_id, wav_bytes(1.0))
        job_id = body["job_id"]
        assert object_keys(s3_client, s3_bucket, f"incoming/{job_id}")

        assert delete(api, job_id).status_code == 204

        assert object_keys(s3_client, s3_bucket, f"incoming/{job_id}") == set()
    finally:
        worker_service.signal_group(signal.SIGCONT)
    wait_until(
        lambda: task_ended(worker_service, body["task_id"]),
        timeout=30,
        what="the worker done with the task (revoked, or run and found no record)",
    )
    assert not s3_traces(s3_client, s3_bucket, token_id, job_id)
    assert not list(spool_dir.glob(f"{job_id}*"))
    assert redis_traces(redis_client, job_id) == []
