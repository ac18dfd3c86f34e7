"""One analysis, start to finish: fetch, decode, then feature stages that report progress.

Fetch and decode (of the take, and of the token's reference when one is stored, for the sync
stage) run before the caller commits to a response, so their failures still get a
proper status code; the feature stages run afterwards as an async generator of `Progress`
events ending in the `AnalysisResult`, which the HTTP layer either streams as NDJSON or just
drains. All blocking work (file writes, ffmpeg, numpy) runs in worker threads under one
capacity limiter, so the event loop stays free for /healthz and for other streams.

Progress is one clock for the whole analysis: 0.1 once decoded, 0.95 after the last stage,
and when `analysis_min_seconds` is set each stage also waits for its share of that floor,
sending a line every `analysis_progress_interval_seconds` meanwhile, so the numbers rise
smoothly with wall time instead of jumping to 0.95 in a few milliseconds.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import IO, Any

import anyio
import numpy as np

from analysis_server import features, quality, sync
from analysis_server.audio import DecodedAudio, decode_file
from analysis_server.errors import AnalysisError, ObjectNotFound
from analysis_server.models import (
    AnalysisResult,
    AnalyzeRequest,
    Quality,
    QualityWarning,
    SyncComponents,
    SyncResult,
    VoicedSegment,
)
from analysis_server.storage import S3Client, download_object
from media_guard import DecodeLimits

log = logging.getLogger(__name__)

DECODED_PROGRESS = 0.1
FINAL_PROGRESS = 0.95


@dataclass(frozen=True)
class Progress:
    progress: float
    stage: str


@dataclass(frozen=True)
class Inputs:
    """What the stages work on: the take and, when the token has one, its reference."""

    audio: DecodedAudio
    reference: DecodedAudio | None = None
    max_offset_ms: float = 5000.0


@dataclass(frozen=True)
class Stage:
    """One step of the analysis. `run` gets the inputs and the fields found so far (the
    quality stage reads the levels), and returns the fields it adds to the result."""

    name: str
    run: Callable[[Inputs, dict[str, Any]], dict[str, Any]]


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _levels(inputs: Inputs, _found: dict[str, Any]) -> dict[str, Any]:
    audio = inputs.audio
    return {
        "loudness_dbfs": _rounded(features.rms_dbfs(audio.mono), 2),
        "loudness_lufs": _rounded(
            features.integrated_loudness_lufs(audio.samples, audio.sample_rate), 2
        ),
        "peak_dbfs": _rounded(features.peak_dbfs(audio.samples), 2),
    }


def _clipping(inputs: Inputs, _found: dict[str, Any]) -> dict[str, Any]:
    return {"clipping_ratio": round(features.clipping_ratio(inputs.audio.samples), 6)}


def _silence(inputs: Inputs, _found: dict[str, Any]) -> dict[str, Any]:
    audio = inputs.audio
    return {"silence_ratio": round(features.silence_ratio(audio.mono, audio.sample_rate), 4)}


def _segments(inputs: Inputs, _found: dict[str, Any]) -> dict[str, Any]:
    audio = inputs.audio
    segments = features.voiced_segments(audio.mono, audio.sample_rate)
    return {
        "voiced_segments": [VoicedSegment(**segment) for segment in segments],
        "segments_per_minute": _rounded(
            features.segments_per_minute(len(segments), audio.duration_ms), 2
        ),
    }


def _pitch(inputs: Inputs, _found: dict[str, Any]) -> dict[str, Any]:
    audio = inputs.audio
    track = features.pitch_track(audio.mono, audio.sample_rate)
    spread = features.pitch_range_hz(track)
    return {
        "pitch_hz": round(float(np.median(track)), 2) if track.size else None,
        "pitch_low_hz": None if spread is None else round(spread[0], 2),
        "pitch_high_hz": None if spread is None else round(spread[1], 2),
    }


def _quality(inputs: Inputs, found: dict[str, Any]) -> dict[str, Any]:
    issues = quality.assess(
        duration_ms=inputs.audio.duration_ms,
        loudness_lufs=found.get("loudness_lufs"),
        loudness_dbfs=found.get("loudness_dbfs"),
        clipping_ratio=found.get("clipping_ratio", 0.0),
        silence_ratio=found.get("silence_ratio", 0.0),
    )
    return {
        "quality": Quality(
            ok=not issues,
            warnings=[QualityWarning(code=issue.code, message=issue.message) for issue in issues],
        )
    }


def _sync(inputs: Inputs, _found: dict[str, Any]) -> dict[str, Any]:
    reference, audio = inputs.reference, inputs.audio
    if reference is None:
        return {"sync": None}
    measures = sync.compare(
        reference.mono,
        reference.sample_rate,
        audio.mono,
        audio.sample_rate,
        max_offset_ms=inputs.max_offset_ms,
    )
    return {
        "sync": SyncResult(
            reference_duration_ms=reference.duration_ms,
            offset_ms=round(measures.offset_ms, 1),
            envelope_correlation=round(measures.envelope_correlation, 4),
            timing_deviation_ms=round(measures.timing_deviation_ms, 1),
            sync_score=round(measures.sync_score, 1),
            components=SyncComponents(
                **{name: round(value, 4) for name, value in measures.components.items()}
            ),
        )
    }


STAGES: tuple[Stage, ...] = (
    Stage("loudness", _levels),
    Stage("clipping", _clipping),
    Stage("silence", _silence),
    Stage("segments", _segments),
    Stage("pitch", _pitch),
    Stage("quality", _quality),
    Stage("sync", _sync),
)


@dataclass(frozen=True)
class Pacing:
    """The wall-time floor of one analysis, measured from `started` (anyio's clock)."""

    started: float
    min_seconds: float = 0.0
    interval: float = 0.2

    def due(self, progress: float) -> float:
        return self.started + self.min_seconds * progress / FINAL_PROGRESS

    def progress_at(self, now: float) -> float:
        if self.min_seconds <= 0:
            return FINAL_PROGRESS
        return FINAL_PROGRESS * (now - self.started) / self.min_seconds

    async def wait_for(self, *, low: float, high: float, stage: str) -> AsyncIterator[Progress]:
        """Sleep until progress `high` is due, yielding interpolated progress on the way.

        Ticks are strictly between `low` and `high`; the caller reports `high` itself."""
        deadline = self.due(high)
        last = low
        while (remaining := deadline - anyio.current_time()) > 0.001:
            if remaining <= self.interval:
                await anyio.sleep(remaining)
                return
            await anyio.sleep(self.interval)
            value = min(high, max(low, self.progress_at(anyio.current_time())))
            if last < value < high:
                last = value
                yield Progress(value, stage)


def _named_temporary_file() -> IO[bytes]:
    return tempfile.NamedTemporaryFile(prefix="ysa-")


@asynccontextmanager
async def scratch_file() -> AsyncIterator[IO[bytes]]:
    """A temporary file opened and deleted in worker threads (both touch the disk)."""
    handle = await anyio.to_thread.run_sync(_named_temporary_file)
    try:
        yield handle
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(handle.close)


async def fetch_and_decode(
    s3: S3Client,
    *,
    bucket: str,
    key: str,
    max_bytes: int,
    limits: DecodeLimits,
    limiter: anyio.CapacityLimiter,
) -> tuple[DecodedAudio, int]:
    """Download the object to a scratch file and decode it; the file is gone on return."""
    async with scratch_file() as scratch:
        size = await download_object(s3, bucket=bucket, key=key, dest=scratch, max_bytes=max_bytes)
        audio = await anyio.to_thread.run_sync(
            partial(decode_file, Path(scratch.name), limits=limits),
            limiter=limiter,
        )
    return audio, size


async def fetch_reference(
    s3: S3Client,
    *,
    bucket: str,
    key: str,
    max_bytes: int,
    limits: DecodeLimits,
    limiter: anyio.CapacityLimiter,
) -> DecodedAudio | None:
    """The token's reference, decoded, or None when there is none.

    Storage failures propagate (a 503 is worth a retry), but a stored reference that no longer
    decodes or exceeds today's limits only costs the `sync` block: it was checked when it was
    stored, and the take itself is still worth analysing.
    """
    try:
        reference, _size = await fetch_and_decode(
            s3,
            bucket=bucket,
            key=key,
            max_bytes=max_bytes,
            limits=replace(limits, max_channels=1),  # sync uses its mono mix only
            limiter=limiter,
        )
    except ObjectNotFound:
        return None
    except AnalysisError as exc:
        if exc.status_code >= 500:
            raise
        log.warning("reference s3://%s/%s unusable, no sync: %s", bucket, key, exc.message)
        return None
    return reference


async def analyse(
    inputs: Inputs,
    *,
    request: AnalyzeRequest,
    size: int,
    pacing: Pacing,
    limiter: anyio.CapacityLimiter,
    stages: Sequence[Stage] = STAGES,
) -> AsyncIterator[Progress | AnalysisResult]:
    """Run the feature stages; yields Progress events, then the AnalysisResult last.

    Progress values never decrease. Exceptions from a stage propagate to the consumer, which
    decides how to report them (a status code before streaming, an error line after).
    """
    yield Progress(DECODED_PROGRESS, "decoded")
    fields: dict[str, Any] = {}
    low = DECODED_PROGRESS
    for index, stage in enumerate(stages, start=1):
        high = DECODED_PROGRESS + (FINAL_PROGRESS - DECODED_PROGRESS) * index / len(stages)
        fields.update(await anyio.to_thread.run_sync(stage.run, inputs, fields, limiter=limiter))
        async for tick in pacing.wait_for(low=low, high=high, stage=stage.name):
            yield tick
        yield Progress(high, stage.name)
        low = high
    yield AnalysisResult(
        job_id=request.job_id,
        token_id=request.token_id,
        key=request.key,
        bytes=size,
        duration_ms=inputs.audio.duration_ms,
        sample_rate=inputs.audio.sample_rate,
        channels=inputs.audio.channels,
        sample_width=inputs.audio.sample_width,
        **fields,
    )
