"""UPLOAD_STAGING=s3 with real processes: an API host and a worker host apart (the worker in a
directory of its own, with a SPOOL_DIR the API never wrote to), S3 failing while an upload
streams in, clients hanging up, cancel, retry, dedupe and Idempotency-Key.

The worker follows each job's record (`staged_key` or `spool_path`), not its own setting, so one
worker serves an API of each kind here; its S3 traffic and that of `api_via_link` go through
proxies a test can throttle or cut.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from celery import Celery

from devtools import stack
from tests.helpers.api import upload_accepted
from tests.helpers.audio import wav_bytes, white_noise_wav
from tests.helpers.multipart import multipart
from tests.helpers.proxy import CuttableProxy
from tests.helpers.s3 import cancel_mid_upload, object_keys, open_upload_keys, open_uploads
from tests.helpers.wait import wait_until
from tests.helpers.worker_log import task_ended
from yousync.core import keys
from yousync.core.storage import STAGING_PREFIX, staged_key

# Parts of 5 MB (S3's smallest): 16 MB of upload is sent in four, the fourth at commit.
PART_MB = 5
STREAMED_MB = 16
# The worker's link when a test wants its S3 transfers slow enough to act in their middle.
SLOW_LINK = 8 * 1024 * 1024
CRAWLING_LINK = 1024 * 1024


@dataclass
class Apart:
    """APIs on one host, a worker on another: its own working directory and YOUSYNC_HOME (no
    checkout, no .env), its own SPOOL_DIR, S3 reached through `worker_link`."""

    redis: redis.Redis
    env: dict[str, str]  # the APIs' environment
    api: dict[str, str]  # UPLOAD_STAGING -> the base URL of an API staging uploads that way
    api_spool: Path
    worker: stack.Proc
    worker_spool: Path
    worker_link: CuttableProxy

    def local_files(self, job_id: str) -> list[str]:
        """The job's files on the worker's host (fetched copy, prepared file)."""
        return sorted(path.name for path in self.worker_spool.glob(f"{job_id}*"))

    def result(self, job_id: str, wait: float = 30) -> dict[str, Any]:
        response = httpx.get(
            f"{self.api['s3']}/tokens/analysis-result/{job_id}",
            params={"wait": wait},
            timeout=wait + 10,
        )
        assert response.status_code == 200, response.text
        return dict(response.json())

    def messages(self, job_id: str) -> list[str]:
        return [fields["message"] for _, fields in self.redis.xrange(keys.job_events(job_id))]


@pytest.fixture(scope="module")
def apart(
    stack_env: dict[str, str],
    workdir: Path,
    s3_service: stack.Proc,
    analysis_service: stack.Proc,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Apart]:
    host = tmp_path_factory.mktemp("worker-host")
    api_spool = tmp_path_factory.mktemp("api-spool")
    link = CuttableProxy(int(s3_service.name.split(":")[1]))
    own_redis = stack.redis_proc(workdir).start()
    started = [own_redis]
    try:
        url = f"redis://127.0.0.1:{own_redis.name.split(':')[1]}/0"
        env = {
            **stack_env,
            "REDIS_URL": url,
            "SPOOL_DIR": str(api_spool),
            "MAX_UPLOAD_MB": str(STREAMED_MB + 4),
            "S3_MULTIPART_THRESHOLD_MB": str(PART_MB),
            # Slow transfers on a loaded host: far from the 9 s the test stack allows.
            "TASK_SOFT_TIME_LIMIT": "50",
            "TASK_TIME_LIMIT": "60",
            "BROKER_VISIBILITY_TIMEOUT": "90",
        }
        worker_env = {
            **env,
            "UPLOAD_STAGING": "s3",
            "SPOOL_DIR": str(host / "spool"),
            "YOUSYNC_HOME": str(host),
            "S3_ENDPOINT_URL": link.url,
            # A failure is the job's at once: the retry test asks for the retry itself.
            "TASK_MAX_RETRIES": "0",
        }
        worker = stack.worker_proc(
            worker_env, workdir, name=f"apart{uuid.uuid4().hex[:6]}", cwd=host
        ).start()
        started.append(worker)
        apis = {}
        for staging in ("s3", "spool"):
            api = stack.api_proc({**env, "UPLOAD_STAGING": staging}, workdir).start()
            started.append(api)
            apis[staging] = f"http://127.0.0.1:{api.name.split(':')[1]}"
        yield Apart(
            redis=redis.Redis.from_url(url, decode_responses=True),
            env=env,
            api=apis,
            api_spool=api_spool,
            worker=worker,
            worker_spool=host / "spool",
            worker_link=link,
        )
    finally:
        for proc in reversed(started):
            proc.kill()
        link.close()


@pytest.fixture
def worker_link(apart: Apart) -> Iterator[CuttableProxy]:
    """The worker's link to S3, restored to full speed after the test."""
    yield apart.worker_link
    apart.worker_link.throttle(None)
    apart.worker_link.restore()


@dataclass
class LinkedApi:
    url: str
    link: CuttableProxy
    proc: stack.Proc


@pytest.fixture(scope="module")
def api_via_link(apart: Apart, workdir: Path, s3_service: stack.Proc) -> Iterator[LinkedApi]:
    """An API staging in S3 through a proxy the test may cut (no worker needed: no job)."""
    link = CuttableProxy(int(s3_service.name.split(":")[1]))
    env = {**apart.env, "UPLOAD_STAGING": "s3", "S3_ENDPOINT_URL": link.url}
    proc = stack.api_proc(env, workdir).start()
    try:
        yield LinkedApi(f"http://127.0.0.1:{proc.name.split(':')[1]}", link, proc)
    finally:
        proc.kill()
        link.close()


def job_keys(client: redis.Redis, *ids: str) -> list[str]:
    """Every Redis key naming one of `ids` (job hash, events, token index, idempotency…)."""
    return sorted(key for job_id in ids for key in client.scan_iter(f"*{job_id}*"))


# --- a worker host apart from the API ----------------------------------------------------------


def test_worker_apart_when_uploads_staged_in_s3_then_job_completes_and_staged_object_replaced(
    apart: Apart, token_id: str, s3_client: Any, s3_bucket: str
) -> None:
    audio = wav_bytes(2.0, freq=330.0)
    body = upload_accepted(apart.api["s3"], token_id, audio)
    job_id = body["job_id"]
    # Whole before the 202 (the analysis alone lasts a second, so the worker cannot be done).
    staged = s3_client.head_object(Bucket=s3_bucket, Key=staged_key(job_id))
    assert staged["ContentLength"] == len(audio)
    assert not list(apart.api_spool.glob(f"{job_id}*")), "nothing of it on the API's disk"

    snapshot = apart.result(job_id)

    assert snapshot["status"] == "completed", snapshot
    assert snapshot["result"]["stored"]["uploaded_bytes"] == len(audio)
    prepared = f"audio/{token_id}/{job_id}.flac"
    assert snapshot["s3_url"] == f"s3://{s3_bucket}/{prepared}"
    assert s3_client.head_object(Bucket=s3_bucket, Key=prepared)["ContentLength"] > 0
    wait_until(
        lambda: not object_keys(s3_client, s3_bucket, staged_key(job_id)),
        timeout=10,
        what="the staged object deleted after success",
    )
    wait_until(
        lambda: not apart.local_files(job_id), timeout=10, what="the worker's copies deleted"
    )


def test_worker_apart_when_uploads_spooled_then_job_fails_at_once_saying_to_stage_in_s3(
    apart: Apart, token_id: str
) -> None:
    body = upload_accepted(apart.api["spool"], token_id, wav_bytes(2.0, freq=350.0))

    snapshot = apart.result(body["job_id"])

    assert snapshot["status"] == "failed", snapshot
    error = snapshot["error"]
    assert error["code"] == "spool_unreachable"
    assert "UPLOAD_STAGING=s3" in error["message"]
    assert error["retryable"] is False


# --- the API staging an upload: S3 failing, the client hanging up ------------------------------


class ClientHungUp(Exception):
    """Raised inside the request body: httpx drops the connection mid-upload."""


def streamed_upload(pause_at: int, at_pause: Callable[[], None]) -> tuple[Iterator[bytes], str]:
    """A multipart body of STREAMED_MB of audio, sent in 256 KB pieces; `at_pause` runs once
    after `pause_at` bytes went out (the test acts there: cuts S3, hangs up)."""
    body, content_type = multipart(("file", "take.wav", white_noise_wav(STREAMED_MB)))
    piece = 256 * 1024

    def pieces() -> Iterator[bytes]:
        for offset in range(0, len(body), piece):
            if offset == pause_at:
                at_pause()
            yield body[offset : offset + piece]

    return pieces(), content_type


def first_part_staged(s3_client: Any, bucket: str, before: set[str]) -> str:
    """Waits for a new multipart upload under incoming/ with a part in it; returns its key."""

    def staged_with_a_part() -> str | None:
        for key in open_upload_keys(s3_client, bucket, STAGING_PREFIX) - before:
            for upload_id in open_uploads(s3_client, bucket, key):
                listed = s3_client.list_parts(Bucket=bucket, Key=key, UploadId=upload_id)
                if listed.get("Parts"):
                    return key
        return None

    return str(wait_until(staged_with_a_part, timeout=20, what="the first part staged"))


def test_upload_when_s3_cut_off_mid_stream_then_503_retry_after_and_no_job_or_object_left(
    api_via_link: LinkedApi,
    apart: Apart,
    token_id: str,
    s3_client: Any,
    s3_bucket: str,
    celery_client: Celery,
) -> None:
    before = open_upload_keys(s3_client, s3_bucket, STAGING_PREFIX)
    staged: list[str] = []

    def cut_once_a_part_is_staged() -> None:
        staged.append(first_part_staged(s3_client, s3_bucket, before))
        api_via_link.link.cut()

    chunks, content_type = streamed_upload((PART_MB + 1) * 1024 * 1024, cut_once_a_part_is_staged)
    try:
        response = httpx.post(
            f"{api_via_link.url}/tokens/{token_id}/upload-audio",
            content=chunks,
            headers={"Content-Type": content_type},
            timeout=60,
        )
    finally:
        api_via_link.link.restore()

    assert response.status_code == 503, response.text
    assert response.json()["code"] == "storage_unavailable"
    assert response.headers["Retry-After"] == "5"
    [key] = staged
    job_id = key.removeprefix(STAGING_PREFIX)
    assert job_keys(apart.redis, job_id, token_id) == [], "no job"
    assert object_keys(s3_client, s3_bucket, key) == set(), "no half-written object"
    # S3 was still cut off when the API discarded the upload, so the abort could not reach it
    # either: the unfinished multipart upload is left to the staging sweep, and logged.
    assert open_uploads(s3_client, s3_bucket, key), "aborted after all: the sweep has nothing"
    assert f"staged upload {key} left for the sweep" in api_via_link.proc.log_tail(200)
    # Beat's sweep, with no grace (by default it waits SPOOL_ORPHAN_GRACE_SECONDS after the
    # last part), run by the session's worker on the same bucket.
    swept = celery_client.send_task(
        "tasks.maintenance.sweep_staged_uploads",
        kwargs={"orphan_grace_seconds": 0},
        queue="maintenance",
    ).get(timeout=30)
    assert key in swept["aborted"] and open_uploads(s3_client, s3_bucket, key) == []


def test_upload_when_client_hangs_up_mid_stream_then_no_staged_object_or_multipart_left(
    apart: Apart, token_id: str, s3_client: Any, s3_bucket: str
) -> None:
    before = open_upload_keys(s3_client, s3_bucket, STAGING_PREFIX)
    staged: list[str] = []

    def hang_up_once_a_part_is_staged() -> None:
        staged.append(first_part_staged(s3_client, s3_bucket, before))
        raise ClientHungUp

    chunks, content_type = streamed_upload(
        (PART_MB + 1) * 1024 * 1024, hang_up_once_a_part_is_staged
    )
    with pytest.raises(ClientHungUp):
        httpx.post(
            f"{apart.api['s3']}/tokens/{token_id}/upload-audio",
            content=chunks,
            headers={"Content-Type": content_type},
            timeout=60,
        )

    [key] = staged
    wait_until(
        lambda: not open_uploads(s3_client, s3_bucket, key),
        timeout=10,
        what="the hung-up upload's multipart upload aborted",
    )
    assert object_keys(s3_client, s3_bucket, key) == set()
    assert job_keys(apart.redis, key.removeprefix(STAGING_PREFIX), token_id) == []


# --- the worker's side: cancel, retry --------------------------------------------------------


def test_cancel_when_worker_uploading_from_s3_staging_then_nothing_of_the_job_left(
    apart: Apart, worker_link: CuttableProxy, token_id: str, s3_client: Any, s3_bucket: str
) -> None:
    worker_link.throttle(SLOW_LINK)
    body, prepared = cancel_mid_upload(
        apart.api["s3"], token_id, s3_client, s3_bucket, white_noise_wav(12)
    )
    job_id = body["job_id"]
    wait_until(
        lambda: task_ended(apart.worker, body["task_id"]),
        timeout=30,
        what="the worker done with the cancelled task",
    )
    wait_until(
        lambda: not open_uploads(s3_client, s3_bucket, prepared),
        timeout=10,
        what="the prepared file's multipart upload aborted",
    )

    assert apart.result(job_id, wait=0)["status"] == "cancelled"
    assert object_keys(s3_client, s3_bucket, staged_key(job_id)) == set()
    assert object_keys(s3_client, s3_bucket, f"audio/{token_id}/{job_id}") == set()
    assert open_uploads(s3_client, s3_bucket, staged_key(job_id)) == []
    assert apart.local_files(job_id) == []


def test_retry_when_staged_in_s3_then_worker_fetches_the_staged_upload_again_and_completes(
    apart: Apart, worker_link: CuttableProxy, token_id: str, s3_client: Any, s3_bucket: str
) -> None:
    # S3 cut off once the worker has fetched the upload, before it stored the prepared file
    # (a slow link: that takes a second): the job fails (retryable) with nothing stored, so
    # the retry must prepare again, from the staged upload.
    worker_link.throttle(CRAWLING_LINK)
    body = upload_accepted(apart.api["s3"], token_id, white_noise_wav(1))
    job_id = body["job_id"]
    wait_until(
        lambda: (apart.worker_spool / f"{job_id}.fetched").exists(),
        timeout=20,
        interval=0.01,
        what="the upload fetched (s3transfer renames it once whole)",
    )
    worker_link.cut()
    failed = apart.result(job_id)
    assert failed["status"] == "failed", failed
    assert failed["error"]["code"] == "storage_unavailable" and failed["error"]["retryable"]
    worker_link.throttle(None)
    worker_link.restore()
    wait_until(
        lambda: task_ended(apart.worker, body["task_id"]),
        timeout=10,
        what="the failed delivery ended",
    )
    assert apart.local_files(job_id) == [], "the fetched copy is the delivery's only"

    retried = httpx.post(f"{apart.api['s3']}/tokens/analysis-retry/{job_id}")
    assert retried.status_code == 202, retried.text
    snapshot = apart.result(job_id)

    assert snapshot["status"] == "completed", snapshot
    assert apart.messages(job_id).count("Fetching the upload") == 2, "fetched at each delivery"
    assert s3_client.head_object(Bucket=s3_bucket, Key=f"audio/{token_id}/{job_id}.flac")
    wait_until(
        lambda: (
            not object_keys(s3_client, s3_bucket, staged_key(job_id))
            and not apart.local_files(job_id)
        ),
        timeout=10,
        what="the staged object and the worker's copies deleted",
    )


# --- dedupe and Idempotency-Key ----------------------------------------------------------------


def test_identical_upload_when_staged_in_s3_then_deduplicated_without_a_second_staged_object(
    apart: Apart, token_id: str, s3_client: Any, s3_bucket: str
) -> None:
    audio = wav_bytes(2.0, freq=370.0)
    first = upload_accepted(apart.api["s3"], token_id, audio)
    assert apart.result(first["job_id"])["status"] == "completed"

    second = upload_accepted(apart.api["s3"], token_id, audio)

    assert second["deduplicated"] is True and second["status"] == "completed", second
    assert second["job_id"] != first["job_id"]
    assert object_keys(s3_client, s3_bucket, staged_key(second["job_id"])) == set()
    wait_until(
        lambda: not object_keys(s3_client, s3_bucket, staged_key(first["job_id"])),
        timeout=10,
        what="the first upload's staged object deleted",
    )


def test_same_idempotency_key_twice_when_staged_in_s3_then_one_job_and_one_staged_object(
    apart: Apart, token_id: str, s3_client: Any, s3_bucket: str
) -> None:
    before = object_keys(s3_client, s3_bucket, STAGING_PREFIX)
    url = f"{apart.api['s3']}/tokens/{token_id}/upload-audio"
    files = {"file": ("take.wav", wav_bytes(2.0, freq=390.0), "audio/wav")}
    headers = {"Idempotency-Key": f"take-{uuid.uuid4().hex}"}

    answers = [httpx.post(url, files=files, headers=headers, timeout=30) for _ in range(2)]

    assert [a.status_code for a in answers] == [202, 202], [a.text for a in answers]
    job_id = answers[0].json()["job_id"]
    assert answers[1].json()["job_id"] == job_id
    assert answers[1].headers.get("Idempotent-Replayed") == "true"
    staged = object_keys(s3_client, s3_bucket, STAGING_PREFIX) - before
    assert staged <= {staged_key(job_id)}, staged
    assert apart.result(job_id)["status"] == "completed"
