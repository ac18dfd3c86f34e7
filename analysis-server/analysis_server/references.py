"""Reference lines: the original recording a token's takes are compared with.

One object per token at `references/{token_id}` in the server's bucket (S3_BUCKET), stored
byte for byte as uploaded, with its decoded format in the object's metadata. A reference is
decoded before it is stored, so a file that cannot be analysed is refused at upload (422)
instead of silently producing no `sync` block on every later analysis.

The request body is streamed to a scratch file (capped at ANALYSIS_MAX_BYTES while reading,
never held in memory), decoded in a worker thread, then uploaded from the file.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from functools import partial
from pathlib import Path

import anyio

from analysis_server.analysis import scratch_file
from analysis_server.audio import decode_file
from analysis_server.errors import ObjectNotFound, ReferenceNotFound
from analysis_server.models import ReferenceInfo
from analysis_server.storage import (
    ObjectStream,
    S3Client,
    delete_object,
    head_object,
    open_object,
    spool_body,
    upload_file,
)
from media_guard import DecodeLimits

PREFIX = "references/"


def reference_key(token_id: str) -> str:
    return f"{PREFIX}{token_id}"


def _content_type(declared: str | None) -> str:
    """Keep the client's audio type for GET; anything else is just bytes to us."""
    kind = (declared or "").split(";", 1)[0].strip().lower()
    return kind if kind.startswith("audio/") else "application/octet-stream"


async def store_reference(
    s3: S3Client,
    *,
    bucket: str,
    token_id: str,
    chunks: AsyncIterator[bytes],
    declared_type: str | None,
    max_bytes: int,
    limits: DecodeLimits,
    limiter: anyio.CapacityLimiter,
) -> tuple[ReferenceInfo, bool]:
    """Validate and store a reference; returns what was stored and whether it is new (a
    PUT over an existing one replaces it)."""
    key = reference_key(token_id)
    content_type = _content_type(declared_type)
    async with scratch_file() as scratch:
        size = await spool_body(chunks, scratch, max_bytes=max_bytes, what="the reference")
        # Only the mono mix of a reference is ever used (sync), so it is decoded as mono.
        audio = await anyio.to_thread.run_sync(
            partial(decode_file, Path(scratch.name), limits=replace(limits, max_channels=1)),
            limiter=limiter,
        )
        existed = await head_object(s3, bucket=bucket, key=key) is not None
        await upload_file(
            s3,
            path=scratch.name,
            bucket=bucket,
            key=key,
            content_type=content_type,
            metadata={
                "duration-ms": str(audio.duration_ms),
                "sample-rate": str(audio.sample_rate),
                "channels": str(audio.source_channels),
            },
        )
    info = ReferenceInfo(
        token_id=token_id,
        key=key,
        bytes=size,
        content_type=content_type,
        duration_ms=audio.duration_ms,
        sample_rate=audio.sample_rate,
        channels=audio.source_channels,
    )
    return info, not existed


async def open_reference(s3: S3Client, *, bucket: str, token_id: str) -> ObjectStream:
    try:
        return await open_object(s3, bucket=bucket, key=reference_key(token_id))
    except ObjectNotFound as exc:
        raise ReferenceNotFound(f"no reference stored for token {token_id}") from exc


async def delete_reference(s3: S3Client, *, bucket: str, token_id: str) -> None:
    """Delete it; ReferenceNotFound when there was none (S3's DELETE would not say)."""
    key = reference_key(token_id)
    if await head_object(s3, bucket=bucket, key=key) is None:
        raise ReferenceNotFound(f"no reference stored for token {token_id}")
    await delete_object(s3, bucket=bucket, key=key)
