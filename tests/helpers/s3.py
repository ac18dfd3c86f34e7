"""What a test asks of S3 (moto) directly: the objects and unfinished multipart uploads under a
prefix, and a job cancelled while its worker's multipart upload is under way."""

from __future__ import annotations

from typing import Any

import httpx

from tests.helpers import sse
from tests.helpers.api import upload_accepted


def object_keys(s3_client: Any, bucket: str, prefix: str) -> set[str]:
    """Keys of the objects under `prefix` (one page: tests keep few)."""
    listed = s3_client.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return {found["Key"] for found in listed.get("Contents", [])}


def open_uploads(s3_client: Any, bucket: str, key: str) -> list[str]:
    """Ids of the unfinished multipart uploads of exactly `key`."""
    listed = s3_client.list_multipart_uploads(Bucket=bucket, Prefix=key)
    return [u["UploadId"] for u in listed.get("Uploads", []) if u["Key"] == key]


def open_upload_keys(s3_client: Any, bucket: str, prefix: str) -> set[str]:
    """Keys under `prefix` with an unfinished multipart upload."""
    listed = s3_client.list_multipart_uploads(Bucket=bucket, Prefix=prefix)
    return {u["Key"] for u in listed.get("Uploads", [])}


def cancel_mid_upload(
    api: str, token_id: str, s3_client: Any, bucket: str, content: bytes
) -> tuple[dict[str, str], str]:
    """Upload `content` (large enough for a multipart upload of the stored file), follow the
    job's SSE stream until the worker's upload to S3 is under way (its parts going up), cancel
    it there; returns the upload's answer and the object key."""
    body = upload_accepted(api, token_id, content)
    key = f"audio/{token_id}/{body['job_id']}.flac"  # AUDIO_STORE_FORMAT=flac in the test stack
    for event in sse.stream(f"{api}{body['progress_url']}", timeout=60):
        snapshot = event.json
        if snapshot["stage"] == "uploading" and 10 < snapshot["progress"] < 40:
            assert open_uploads(s3_client, bucket, key), "a multipart upload is under way"
            response = httpx.post(f"{api}/tokens/analysis-cancel/{body['job_id']}")
            assert response.status_code == 200, response.text
            assert response.json()["status"] == "cancelled"
            return body, key
    raise AssertionError("the job ended without being seen uploading")
