"""A real multi-part upload from the worker to S3 (moto), on a slow link so that it lasts long
enough to watch and to interrupt: its byte-level progress reaches the job's SSE stream between
10 and 40 %, and a cancel in the middle of it leaves no multipart upload and no object behind
(the stored object of a finished upload would stay, for a retry: Pipeline.clean_up_if_cancelled).
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest

from devtools import stack
from tests.helpers import sse
from tests.helpers.api import upload_accepted
from tests.helpers.audio import white_noise_wav
from tests.helpers.mini_stack import (
    SLOW_S3_BYTES_PER_SECOND,
    SLOW_S3_THRESHOLD_MB,
    SLOW_S3_UPLOAD_MB,
    MiniStack,
    mini_stacks,
    slow_s3_settings,
)
from tests.helpers.proxy import CuttableProxy
from tests.helpers.s3 import cancel_mid_upload, open_uploads
from tests.helpers.wait import wait_until
from tests.helpers.worker_log import task_ended

THRESHOLD_MB = SLOW_S3_THRESHOLD_MB
UPLOAD_MB = SLOW_S3_UPLOAD_MB


@pytest.fixture(scope="module")
def slow_s3_stack(
    stack_env: dict[str, str], workdir: Path, s3_service: stack.Proc, analysis_service: stack.Proc
) -> Iterator[MiniStack]:
    """A worker (and API) reaching S3 through a slow link; the analysis server's own S3
    access stays direct."""
    proxy = CuttableProxy(int(s3_service.name.split(":")[1]))
    proxy.throttle(SLOW_S3_BYTES_PER_SECOND)
    try:
        with mini_stacks(stack_env, workdir) as make:
            yield make(**slow_s3_settings(proxy.url))
    finally:
        proxy.close()


def test_upload_when_multipart_then_sse_shows_byte_progress_strictly_rising_between_10_and_40(
    slow_s3_stack: MiniStack, token_id: str, s3_client: Any, s3_bucket: str
) -> None:
    api = slow_s3_stack.api_url
    body = upload_accepted(api, token_id, white_noise_wav(UPLOAD_MB))

    snapshots = [e.json for e in sse.stream(f"{api}{body['progress_url']}", timeout=60)]

    assert snapshots[0]["stage"] in ("queued", "preparing"), "followed from before the upload"
    assert snapshots[-1]["status"] == "completed", snapshots[-1]
    values = [snap["progress"] for snap in snapshots if snap["stage"] == "uploading"]
    assert values[0] == 10 and values[-1] == 40, "the stage boundaries are written"
    # Byte callbacks, not just the boundaries: several writes inside the span, each higher.
    inside = [value for value in values if 10 < value < 40]
    assert len(inside) >= 5, values
    assert all(a < b for a, b in pairwise(inside)), values
    # It really went up in parts: S3's ETag of a multipart object ends in -<number of parts>.
    stored = snapshots[-1]["result"]["stored"]
    assert stored["bytes"] > 2 * THRESHOLD_MB * 1024 * 1024
    key = snapshots[-1]["s3_url"].removeprefix(f"s3://{s3_bucket}/")
    head = s3_client.head_object(Bucket=s3_bucket, Key=key)
    assert head["ContentLength"] == stored["bytes"]
    assert head["ETag"].strip('"').endswith("-3"), head["ETag"]


def test_cancel_when_multipart_upload_in_flight_then_no_multipart_upload_and_no_object_left(
    slow_s3_stack: MiniStack, token_id: str, s3_client: Any, s3_bucket: str
) -> None:
    api = slow_s3_stack.api_url
    body, key = cancel_mid_upload(api, token_id, s3_client, s3_bucket, white_noise_wav(UPLOAD_MB))

    def status() -> str:
        return str(httpx.get(f"{api}{body['result_url']}").json()["status"])

    wait_until(lambda: status() == "cancelled", timeout=10, what="the job cancelled")
    # The worker notices at its next byte-progress write and the multipart upload is aborted.
    wait_until(
        lambda: not open_uploads(s3_client, s3_bucket, key),
        timeout=30,
        what="the cancelled job's multipart upload aborted",
    )
    listed = s3_client.list_objects_v2(Bucket=s3_bucket, Prefix=f"audio/{token_id}/")
    assert listed.get("KeyCount") == 0, "an unfinished upload leaves no object"
    snapshot = httpx.get(f"{api}{body['result_url']}").json()
    assert snapshot["status"] == "cancelled" and snapshot["progress"] < 40, snapshot


def test_cancel_when_multipart_upload_in_flight_then_the_worker_deletes_the_spool_files(
    slow_s3_stack: MiniStack, token_id: str, s3_client: Any, s3_bucket: str, spool_dir: Path
) -> None:
    body, _ = cancel_mid_upload(
        slow_s3_stack.api_url, token_id, s3_client, s3_bucket, white_noise_wav(UPLOAD_MB)
    )
    worker = slow_s3_stack.procs[1]
    wait_until(
        lambda: task_ended(worker, body["task_id"]),
        timeout=30,
        what="the worker done with the cancelled task",
    )
    left = sorted(path.name for path in spool_dir.glob(f"{body['job_id']}*"))
    assert left == [], "the upload and its prepared copy are deleted after a cancel"
