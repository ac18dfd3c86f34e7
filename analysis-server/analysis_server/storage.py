"""S3 access for the analysis server: one aioboto3 client per process, streamed downloads.

The object is streamed to a temporary file in chunks, never held whole in memory, and the size
cap is enforced twice: from ContentLength before the first byte is read, and while reading in
case the length was missing or wrong. botocore's and aiohttp's many exception types are mapped
here, once, to the outcomes the caller distinguishes: not found (404), too large (413),
transient (503) and refused for another reason (502).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import IO, Any

import aioboto3
import aiohttp
import anyio
from aiobotocore.config import AioConfig
from botocore.exceptions import BotoCoreError, ClientError

from analysis_server.config import Settings
from analysis_server.errors import (
    AnalysisError,
    AudioTooLarge,
    ObjectNotFound,
    StorageError,
    StorageUnavailable,
)

log = logging.getLogger(__name__)

# aiobotocore's client classes are generated at run time; there is no static type to name.
S3Client = Any

# Reads come off the socket in whatever pieces aiohttp has buffered; they are gathered into
# batches of this size so each blocking file write (in a worker thread) is worth the hop.
READ_CHUNK_BYTES = 256 * 1024
WRITE_BATCH_BYTES = 4 * 1024 * 1024

_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NotFound", "404"})

# Network-level failures: aiobotocore maps most to BotoCoreError subclasses (connect errors,
# timeouts, truncated bodies), but aiohttp and the OS can still leak a few of their own.
_TRANSIENT_ERRORS = (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError)


@asynccontextmanager
async def open_s3_client(settings: Settings) -> AsyncIterator[S3Client]:
    """The process's S3 client, for the app's lifespan: its connection pool is reused by
    every request and closed once at shutdown."""
    config = AioConfig(
        connect_timeout=settings.s3_connect_timeout_seconds,
        read_timeout=settings.s3_read_timeout_seconds,
        retries={"max_attempts": settings.s3_max_attempts, "mode": "standard"},
    )
    session = aioboto3.Session()
    async with session.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url or None,
        region_name=settings.aws_region or None,
        aws_access_key_id=settings.aws_access_key_id or None,
        aws_secret_access_key=settings.aws_secret_access_key or None,
        config=config,
    ) as client:
        yield client


def _client_error_to_analysis_error(exc: ClientError, *, bucket: str, key: str) -> AnalysisError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    # Messages name the key, never the bucket, and a missing bucket is not told apart from
    # any other refusal: a caller learns nothing about the storage beyond its own object.
    if code == "NoSuchBucket":
        log.error("storage: bucket %s does not exist (S3_BUCKET)", bucket)
        return StorageError("storage refused the request")
    if code in _NOT_FOUND_CODES or status == 404:
        return ObjectNotFound(f"object not found: {key}")
    if status >= 500 or code in {"SlowDown", "ServiceUnavailable", "InternalError"}:
        return StorageUnavailable(f"storage answered {status or code}")
    log.error("storage refused access to s3://%s/%s: %s", bucket, key, code or status)
    return StorageError("storage refused the request")


async def download_object(
    s3: S3Client, *, bucket: str, key: str, dest: IO[bytes], max_bytes: int
) -> int:
    """Stream s3://bucket/key into `dest` (an open binary file) and return the byte count.

    Raises ObjectNotFound, AudioTooLarge, StorageUnavailable or StorageError.
    """
    try:
        response = await s3.get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        raise _client_error_to_analysis_error(exc, bucket=bucket, key=key) from exc
    except _TRANSIENT_ERRORS as exc:
        raise _unreachable(exc) from exc

    declared = int(response.get("ContentLength") or 0)
    # `async with` releases the connection even when we stop early (too large, cancelled).
    # (It yields aiohttp's response; reads go through the StreamingBody wrapper, which maps
    # aiohttp's errors to botocore's and checks the byte count against ContentLength at EOF.)
    body = response["Body"]
    async with body:
        if declared > max_bytes:
            raise AudioTooLarge(f"object is {declared} bytes; the limit is {max_bytes}")

        async def chunks() -> AsyncIterator[bytes]:
            read = 0
            while True:
                try:
                    chunk = await body.read(READ_CHUNK_BYTES)
                except _TRANSIENT_ERRORS as exc:
                    log.warning("storage read failed after %d bytes: %r", read, exc)
                    raise StorageUnavailable(
                        f"storage read failed after {read} bytes: {type(exc).__name__}"
                    ) from exc
                if not chunk:
                    return
                read += len(chunk)
                yield chunk

        total = await spool_body(chunks(), dest, max_bytes=max_bytes, what="object")
    return total


@dataclass(frozen=True)
class BucketCheck:
    ok: bool
    latency_ms: float
    error: str | None = None


async def check_bucket(s3: S3Client, *, bucket: str, within_seconds: float) -> BucketCheck:
    """head_bucket under a hard deadline, so /readyz answers promptly even when S3 hangs."""
    started = time.perf_counter()
    error: str | None = None
    try:
        with anyio.fail_after(within_seconds):
            await s3.head_bucket(Bucket=bucket)
    except TimeoutError:
        error = f"no answer within {within_seconds:g}s"
    except (ClientError, *_TRANSIENT_ERRORS) as exc:
        # The kind of failure only: botocore's text names the endpoint and the bucket, and a
        # NoSuchBucket code would tell a caller the bucket is missing. The log has it all.
        log.warning("readiness: S3 check failed: %r", exc)
        error = "refused" if isinstance(exc, ClientError) else "unreachable"
    latency_ms = round((time.perf_counter() - started) * 1000, 1)
    return BucketCheck(ok=error is None, latency_ms=latency_ms, error=error)


def _unreachable(exc: Exception) -> StorageUnavailable:
    """botocore's messages carry the endpoint URL, bucket included: logged, not answered."""
    log.warning("storage unreachable: %r", exc)
    return StorageUnavailable(f"storage unreachable: {type(exc).__name__}")


def _map_errors(exc: Exception, *, bucket: str, key: str) -> AnalysisError:
    if isinstance(exc, ClientError):
        return _client_error_to_analysis_error(exc, bucket=bucket, key=key)
    return _unreachable(exc)


async def head_object(s3: S3Client, *, bucket: str, key: str) -> dict[str, Any] | None:
    """The object's metadata (HeadObject's answer), or None when there is no such object."""
    try:
        response: dict[str, Any] = await s3.head_object(Bucket=bucket, Key=key)
    except (ClientError, *_TRANSIENT_ERRORS) as exc:
        error = _map_errors(exc, bucket=bucket, key=key)
        if isinstance(error, ObjectNotFound):
            return None
        raise error from exc
    return response


async def upload_file(
    s3: S3Client,
    *,
    path: str,
    bucket: str,
    key: str,
    content_type: str,
    metadata: dict[str, str],
) -> None:
    """Upload a local file; multipart above boto's threshold, read through an async file so
    no disk read blocks the event loop."""
    try:
        async with await anyio.open_file(path, "rb") as handle:
            await s3.upload_fileobj(
                handle,
                bucket,
                key,
                ExtraArgs={"ContentType": content_type, "Metadata": metadata},
            )
    except (ClientError, *_TRANSIENT_ERRORS) as exc:
        raise _map_errors(exc, bucket=bucket, key=key) from exc


async def delete_object(s3: S3Client, *, bucket: str, key: str) -> None:
    try:
        await s3.delete_object(Bucket=bucket, Key=key)
    except (ClientError, *_TRANSIENT_ERRORS) as exc:
        raise _map_errors(exc, bucket=bucket, key=key) from exc


@dataclass(frozen=True)
class ObjectStream:
    """An open GetObject: headers known, body still to be read with `chunks()`."""

    size: int
    content_type: str
    metadata: dict[str, str]
    body: Any

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body in pieces; the connection is released when this ends or is cancelled
        (a client that hangs up mid-download)."""
        async with self.body:
            while chunk := await self.body.read(READ_CHUNK_BYTES):
                yield chunk


async def open_object(s3: S3Client, *, bucket: str, key: str) -> ObjectStream:
    """Start a GetObject; raises ObjectNotFound, StorageUnavailable or StorageError."""
    try:
        response = await s3.get_object(Bucket=bucket, Key=key)
    except (ClientError, *_TRANSIENT_ERRORS) as exc:
        raise _map_errors(exc, bucket=bucket, key=key) from exc
    return ObjectStream(
        size=int(response.get("ContentLength") or 0),
        content_type=str(response.get("ContentType") or "application/octet-stream"),
        metadata=dict(response.get("Metadata") or {}),
        body=response["Body"],
    )


async def spool_body(
    chunks: AsyncIterator[bytes], dest: IO[bytes], *, max_bytes: int, what: str
) -> int:
    """Write `chunks` to `dest` in batches off the event loop, refusing more than `max_bytes`
    as soon as they arrive (an object read from S3 and a reference uploaded to us alike)."""
    total = 0
    batch = bytearray()
    async for chunk in chunks:
        total += len(chunk)
        if total > max_bytes:
            raise AudioTooLarge(f"{what} exceeds the limit of {max_bytes} bytes")
        batch += chunk
        if len(batch) >= WRITE_BATCH_BYTES:
            await anyio.to_thread.run_sync(dest.write, bytes(batch))
            batch.clear()
    if batch:
        await anyio.to_thread.run_sync(dest.write, bytes(batch))
    await anyio.to_thread.run_sync(dest.flush)
    return total
