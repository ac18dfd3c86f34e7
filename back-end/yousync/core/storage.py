"""S3 for the worker and for the API's upload staging: blocking boto3, byte progress.

The worker is synchronous Celery code, so blocking boto3 is right there. The API calls this
module only from threads (yousync/api/uploads/staging.py sends an upload's parts from a thread
pool; cancel and retry run their one call with `anyio.to_thread`): sending a part streams it
from a scratch file, where aioboto3 would hash and sign it on the event loop. The API's
readiness check keeps its own aioboto3 client, built from `s3_client_kwargs`.

Keys derive from the job (`audio/<token>/<job>.<ext>` for the prepared audio, `incoming/<job>`
for a staged upload), so a retried upload overwrites instead of duplicating, and s3transfer
aborts its multipart upload itself when a part fails.
"""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Protocol

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from yousync.core.config import Settings
from yousync.core.errors import PermanentError, TransientError

MB = 1024 * 1024
log = logging.getLogger(__name__)


def _unavailable(operation: str, exc: Exception) -> TransientError:
    """botocore's and s3transfer's messages name the spool file's host path and the bucket's
    URL: those go to the log; the job's error, which users read, names the failure only."""
    log.warning("S3 %s failed: %s", operation, exc)
    return TransientError("storage_unavailable", f"S3 {operation} failed ({type(exc).__name__})")


def _is_missing(exc: ClientError) -> bool:
    """S3's "no such object", which each of HEAD and GET spells its own way."""
    return exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


def _crc32_header(crc32: int) -> str:
    """A CRC32 as S3's `x-amz-checksum-crc32` carries it: base64 of its 4 big-endian bytes.
    Given by the caller, botocore sends it as it is instead of reading the body to compute it."""
    return base64.b64encode(crc32.to_bytes(4, "big")).decode("ascii")


OBJECT_PREFIX = "audio/"
STAGING_PREFIX = "incoming/"


def object_key(token_id: str, job_id: str, extension: str) -> str:
    return f"{OBJECT_PREFIX}{token_id}/{job_id}.{extension}"


def staged_key(job_id: str) -> str:
    """Where UPLOAD_STAGING=s3 keeps an upload until its job no longer needs it."""
    return f"{STAGING_PREFIX}{job_id}"


class Deletes(Protocol):
    def delete(self, key: str) -> None: ...


def unlink_job_files(spool_dir: Path, pattern: str) -> None:
    """Delete this host's files in SPOOL_DIR matching `pattern` (they are named by job id)."""
    for path in spool_dir.glob(pattern):
        path.unlink(missing_ok=True)


def discard_upload(store: Deletes, spool_dir: Path, job_id: str, staged_key: str | None) -> None:
    """Delete a job's upload wherever it waits — this host's spool files of the job (the
    upload, a fetched copy, the prepared file) and its staged object — once nothing can need it:
    the API for a cancelled queued job, the worker after the job ended. Paths derive from the
    job id, so this works without the record. An S3 outage leaves the staged object to the
    staging sweep (the job's state says it is not needed)."""
    unlink_job_files(spool_dir, f"{job_id}*")
    if staged_key:
        try:
            store.delete(staged_key)
        except TransientError as exc:
            log.warning("job %s: staged upload left for the sweep: %s", job_id, exc)


def s3_client_kwargs(settings: Settings) -> dict[str, object]:
    """Shared by boto3 (worker) and aioboto3 (API readiness): only S3_ENDPOINT_URL decides
    whether this is AWS or a local S3."""
    kwargs: dict[str, object] = {"region_name": settings.aws_region}
    if settings.s3_endpoint_url:
        kwargs["endpoint_url"] = settings.s3_endpoint_url
    if settings.aws_access_key_id:
        kwargs["aws_access_key_id"] = settings.aws_access_key_id
        kwargs["aws_secret_access_key"] = settings.aws_secret_access_key
    return kwargs


class ObjectStore(Protocol):
    """What the worker's pipeline needs of an object store (`Storage` is S3's). A stand-in
    (tests, benchmarks) implements these seven."""

    def url(self, key: str) -> str:
        """The object's address as the job reports it (`s3_url`)."""
        ...

    def size_of(self, key: str) -> int | None:
        """The stored object's size; None when there is no such object."""
        ...

    def upload(
        self, path: Path, key: str, *, content_type: str, on_progress: Callable[[float], None]
    ) -> int:
        """Store `path` under `key`, reporting the fraction sent (0–1, never decreasing);
        returns the bytes stored. Raises TransientError when the store is unavailable."""
        ...

    def download(self, key: str, path: Path) -> int:
        """Fetch `key` into `path`; returns its size. Raises PermanentError `upload_gone` when
        there is no such object, TransientError when the store is unavailable."""
        ...

    def delete(self, key: str) -> None: ...

    def abort_multipart_uploads(self, key: str) -> int:
        """Abort unfinished uploads of `key` (leftovers of a cut-off upload); returns how many."""
        ...

    def delete_under(self, prefix: str) -> list[str]:
        """Delete the objects and unfinished multipart uploads of keys under `prefix` (what a
        deleted job wrote); returns the keys touched."""
        ...


class ByteProgress:
    """Accumulates s3transfer's Callback amounts, which arrive on transfer threads and go
    negative when a part is rewound for a retry; the fraction never moves backwards.

    An exception the report raises (a cancelled job's refused progress write) is kept in
    `stopped_by`: raised inside the request's body read, botocore wraps it as a connection
    error, and the upload must not mistake a cancellation for an S3 outage."""

    def __init__(self, total: int, report: Callable[[float], None]) -> None:
        self._total = max(total, 1)
        self._report = report
        self._lock = threading.Lock()
        self._sent = 0
        self._best = 0.0
        self.stopped_by: Exception | None = None

    def __call__(self, amount: int) -> None:
        with self._lock:
            self._sent = max(0, self._sent + amount)
            fraction = min(self._sent / self._total, 1.0)
            if fraction <= self._best:
                return
            self._best = fraction
        try:
            self._report(fraction)
        except Exception as exc:
            self.stopped_by = exc
            raise


@dataclass(frozen=True)
class MultipartUpload:
    """An unfinished multipart upload, as S3 lists it."""

    key: str
    upload_id: str
    initiated: datetime


@dataclass(frozen=True)
class StoredObject:
    key: str
    last_modified: datetime


class Storage:
    def __init__(self, settings: Settings, *, max_pool_connections: int = 10) -> None:
        """`max_pool_connections`: boto3's default of 10 suits the worker; the API sends the
        parts of many staged uploads at once and asks for as many connections as threads."""
        self.bucket = settings.s3_bucket
        self._client = boto3.client(
            "s3",
            config=Config(
                connect_timeout=5,
                read_timeout=60,
                retries={"max_attempts": 2, "mode": "standard"},
                max_pool_connections=max_pool_connections,
                # Every body we send has its CRC32 header, as over HTTPS, where this is already
                # botocore's default. On a plain-HTTP endpoint (moto, a MinIO on a private
                # network) botocore would otherwise read each body once more to sign its
                # SHA-256, in 1 MiB buffers per sending thread: +35 MB of API RSS during 20
                # concurrent 100 MB staged uploads (bench/bench_upload_concurrency.py).
                s3={"payload_signing_enabled": False},
            ),
            **s3_client_kwargs(settings),
        )
        threshold = settings.s3_multipart_threshold_mb * MB
        self._transfer = TransferConfig(
            multipart_threshold=threshold, multipart_chunksize=threshold, use_threads=True
        )

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def size_of(self, key: str) -> int | None:
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _is_missing(exc):
                return None
            raise _unavailable("head_object", exc) from exc
        except BotoCoreError as exc:
            raise _unavailable("head_object", exc) from exc
        return int(head["ContentLength"])

    def upload(
        self, path: Path, key: str, *, content_type: str, on_progress: Callable[[float], None]
    ) -> int:
        size = path.stat().st_size
        progress = ByteProgress(size, on_progress)
        try:
            self._client.upload_file(
                str(path),
                self.bucket,
                key,
                ExtraArgs={"ContentType": content_type},
                Callback=progress,
                Config=self._transfer,
            )
        except (BotoCoreError, ClientError, boto3.exceptions.S3UploadFailedError) as exc:
            if progress.stopped_by is not None:
                # Our own callback stopped the transfer; s3transfer has aborted the multipart
                # upload. Hand on why (e.g. `Refused` after a cancel), not "S3 unavailable".
                raise progress.stopped_by from None
            raise _unavailable("upload", exc) from exc
        return size

    def download(self, key: str, path: Path) -> int:
        """Fetch `key` into `path` (ranged GETs in parallel above the multipart threshold);
        returns its size. PermanentError `upload_gone` when there is no such object."""
        try:
            self._client.download_file(self.bucket, key, str(path), Config=self._transfer)
        except ClientError as exc:
            if _is_missing(exc):
                raise PermanentError(
                    "upload_gone", "The uploaded file is no longer available"
                ) from exc
            raise _unavailable("download", exc) from exc
        except BotoCoreError as exc:
            raise _unavailable("download", exc) from exc
        return path.stat().st_size

    def delete(self, key: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=key)
        except (BotoCoreError, ClientError) as exc:
            raise _unavailable("delete", exc) from exc

    # Staging (yousync/api/uploads/staging.py): an upload sent part by part as it arrives.

    def put_file(self, body: IO[bytes], key: str, *, crc32: int) -> None:
        """One PUT of a whole (small) file, from its start; `crc32` is its checksum (S3
        refuses the body when it does not match)."""
        body.seek(0)
        try:
            self._client.put_object(
                Bucket=self.bucket, Key=key, Body=body, ChecksumCRC32=_crc32_header(crc32)
            )
        except (BotoCoreError, ClientError) as exc:
            raise _unavailable("upload", exc) from exc

    def start_multipart(self, key: str) -> str:
        try:
            started = self._client.create_multipart_upload(Bucket=self.bucket, Key=key)
        except (BotoCoreError, ClientError) as exc:
            raise _unavailable("upload", exc) from exc
        return str(started["UploadId"])

    def upload_part(
        self, key: str, upload_id: str, number: int, body: IO[bytes], *, crc32: int
    ) -> str:
        """Send one part from the start of `body` (read from the file, never held whole in
        memory) with its checksum `crc32`; returns its ETag for `complete_multipart`."""
        body.seek(0)
        try:
            answer = self._client.upload_part(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=body,
                ChecksumCRC32=_crc32_header(crc32),
            )
        except (BotoCoreError, ClientError) as exc:
            raise _unavailable("upload", exc) from exc
        return str(answer["ETag"])

    def complete_multipart(self, key: str, upload_id: str, etags: list[str]) -> None:
        parts = [{"PartNumber": number, "ETag": etag} for number, etag in enumerate(etags, 1)]
        try:
            self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except (BotoCoreError, ClientError) as exc:
            raise _unavailable("upload", exc) from exc

    def objects(self, prefix: str) -> Iterator[StoredObject]:
        """Every object under `prefix`, all pages (errors untranslated, as `multipart_uploads`)."""
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        for page in pages:
            for found in page.get("Contents", []):
                yield StoredObject(found["Key"], found["LastModified"])

    def last_part_at(self, upload: MultipartUpload) -> datetime:
        """When the upload last received a part (its start when none): a staged upload still
        arriving keeps sending parts, an abandoned one stopped."""
        newest = upload.initiated
        pages = self._client.get_paginator("list_parts").paginate(
            Bucket=self.bucket, Key=upload.key, UploadId=upload.upload_id
        )
        for page in pages:
            for part in page.get("Parts", []):
                newest = max(newest, part["LastModified"])
        return newest

    def abort_multipart_uploads(self, key: str, *, attempts: int = 3) -> int:
        """Abort every unfinished multipart upload of `key` (leftovers are billed). Listing
        again after aborting, because an abort racing a part upload may need repeating."""
        aborted = 0
        for _ in range(attempts):
            try:
                listed = self._client.list_multipart_uploads(Bucket=self.bucket, Prefix=key)
            except (BotoCoreError, ClientError) as exc:
                raise _unavailable("listing", exc) from exc
            uploads = [u for u in listed.get("Uploads", []) if u["Key"] == key]
            if not uploads:
                break
            for upload in uploads:
                self._client.abort_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload["UploadId"]
                )
                aborted += 1
        return aborted

    def multipart_uploads(self, prefix: str) -> Iterator[MultipartUpload]:
        """Every unfinished multipart upload of a key under `prefix`, all pages. S3's errors
        are not translated: the maintenance sweep that lists them fails and runs again."""
        pages = self._client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        for page in pages:
            for upload in page.get("Uploads", []):
                yield MultipartUpload(upload["Key"], upload["UploadId"], upload["Initiated"])

    def delete_under(self, prefix: str) -> list[str]:
        """Delete every object under `prefix` and abort every unfinished multipart upload of a
        key under it (DELETE of a job, a deleted job's worker); returns the keys touched.
        TransientError when S3 is unavailable: the caller may repeat it."""
        touched: list[str] = []
        try:
            for found in list(self.objects(prefix)):
                self._client.delete_object(Bucket=self.bucket, Key=found.key)
                touched.append(found.key)
            for upload in list(self.multipart_uploads(prefix)):
                self.abort_multipart_upload(upload.key, upload.upload_id)
                touched.append(upload.key)
        except (BotoCoreError, ClientError) as exc:
            raise _unavailable("delete", exc) from exc
        return touched

    def abort_multipart_upload(self, key: str, upload_id: str) -> None:
        """Abort one upload; one already gone (`NoSuchUpload`) is as good as aborted."""
        try:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
                raise
