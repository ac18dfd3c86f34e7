"""The worker's S3 client against real endpoints: what its failures tell the user."""

from __future__ import annotations

import base64
import gc
import warnings
import zlib
from pathlib import Path
from typing import Any

import pytest

from devtools import stack
from yousync.core.config import Settings
from yousync.core.errors import TransientError
from yousync.core.storage import Storage


def storage_at(endpoint: str, bucket: str, **settings: Any) -> Storage:
    return Storage(
        Settings(
            s3_endpoint_url=endpoint,
            s3_bucket=bucket,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            **settings,
        )
    )


def test_upload_when_s3_unreachable_then_retryable_error_without_host_path_or_bucket_url(
    tmp_path: Path,
) -> None:
    spool = tmp_path / "spool" / "job.prepared.flac"
    spool.parent.mkdir()
    spool.write_bytes(b"x" * 1024)
    storage = storage_at(f"http://127.0.0.1:{stack.free_port()}", "private-bucket")

    with pytest.raises(TransientError) as failed:
        storage.upload(spool, "audio/tok/job.flac", content_type="audio/flac", on_progress=print)

    assert failed.value.code == "storage_unavailable"
    assert str(tmp_path) not in failed.value.message
    assert "private-bucket" not in failed.value.message
    assert "127.0.0.1" not in failed.value.message


def test_delete_when_object_exists_then_gone(
    s3_endpoint_url: str, s3_bucket: str, s3_client: object
) -> None:
    storage = storage_at(s3_endpoint_url, s3_bucket)
    s3_client.put_object(Bucket=s3_bucket, Key="audio/tok/refused.flac", Body=b"x")  # type: ignore[attr-defined]

    storage.delete("audio/tok/refused.flac")

    assert storage.size_of("audio/tok/refused.flac") is None


class Stop(Exception):
    """What a progress callback raises to stop a transfer (the pipeline's `Refused`)."""


@pytest.mark.parametrize("megabytes", [1, 12], ids=["single-part", "multipart"])
def test_upload_when_progress_callback_raises_then_that_error_not_storage_unavailable(
    s3_endpoint_url: str, s3_bucket: str, tmp_path: Path, megabytes: int
) -> None:
    # A cancelled job's progress write is refused inside the request's body read, where botocore
    # wraps whatever is raised as a connection error: the upload must hand on the callback's own
    # exception, or the task would retry a cancelled job as if S3 were down.
    spool = tmp_path / "job.prepared.flac"
    spool.write_bytes(bytes(range(256)) * (megabytes * 4096))
    storage = storage_at(s3_endpoint_url, s3_bucket, s3_multipart_threshold_mb=5)

    def stop_halfway(fraction: float) -> None:
        if fraction > 0.3:
            raise Stop

    with pytest.raises(Stop):
        storage.upload(
            spool, "audio/tok/stop.flac", content_type="audio/flac", on_progress=stop_halfway
        )

    assert storage.size_of("audio/tok/stop.flac") is None
    # s3transfer leaves the stopped part's file reader for the garbage collector; collect it
    # here, so its ResourceWarning is not blamed on whichever test runs next.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def test_upload_part_when_sent_then_body_carries_our_crc32_and_is_not_read_again_to_sign(
    s3_endpoint_url: str, s3_bucket: str, tmp_path: Path
) -> None:
    # Over plain HTTP (moto here) botocore would otherwise hash every body with SHA-256 and
    # compute its CRC32 itself, each in 1 MiB reads per sending thread: the API's RSS under
    # concurrent staged uploads grew by tens of MB from those reads alone.
    storage = storage_at(s3_endpoint_url, s3_bucket)
    sent: list[dict[str, str]] = []
    storage._client.meta.events.register(
        "before-send.s3.UploadPart",
        lambda request, **_: sent.append(
            {
                k.lower(): v.decode() if isinstance(v, bytes) else v
                for k, v in request.headers.items()
            }
        ),
    )
    part = tmp_path / "part"
    part.write_bytes(bytes(range(256)) * 4096)
    crc32 = zlib.crc32(part.read_bytes())

    upload_id = storage.start_multipart("incoming/job")
    with part.open("rb") as body:
        storage.upload_part("incoming/job", upload_id, 1, body, crc32=crc32)
    storage.abort_multipart_upload("incoming/job", upload_id)

    assert len(sent) == 1
    assert sent[0]["x-amz-checksum-crc32"] == base64.b64encode(crc32.to_bytes(4, "big")).decode()
    assert "UNSIGNED-PAYLOAD" in sent[0]["x-amz-content-sha256"]
