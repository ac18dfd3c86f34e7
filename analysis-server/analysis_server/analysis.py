"""One analysis, start to finish: fetch, decode, then feature stages that report progress.

Fetch and decode run before the caller commits to a response, so their failures still get a
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

import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Any

import anyio

from analysis_server import features
from analysis_server.audio import DecodedAudio, decode_file
from analysis_server.models import AnalysisResult, AnalyzeRequest, VoicedSegment
from analysis_server.storage import S3Client, download_object

DECODED_PROGRESS = 0.1
FINAL_PROGRESS = 0.95


@dataclass(frozen=True)
class Progress:
    progress: float
    stage: str


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[DecodedAudio], dict[str, Any]]


def _levels(audio: DecodedAudio) -> dict[str, Any]:
    loudness = features.rms_dbfs(audio.mono)
    peak = features.peak_dbfs(audio.samples)
    return {
        "loudness_dbfs": None if loudness is None else round(loudness, 2),
        "peak_dbfs": None if peak is None else round(peak, 2),
    }


def _clipping(audio: DecodedAudio) -> dict[str, Any]:
    return {"clipping_ratio": round(features.clipping_ratio(audio.samples), 6)}


def _silence(audio: DecodedAudio) -> dict[str, Any]:
    return {"silence_ratio": round(features.silence_ratio(audio.mono, audio.sample_rate), 4)}


def _segments(audio: DecodedAudio) -> dict[str, Any]:
    segments = features.voiced_segments(audio.mono, audio.sample_rate)
    return {"voiced_segments": [VoicedSegment(**segment) for segment in segments]}


def _pitch(audio: DecodedAudio) -> dict[str, Any]:
    pitch = features.estimate_pitch_hz(audio.mono, audio.sample_rate)
    return {"pitch_hz": None if pitch is None else round(pitch, 2)}


STAGES: tuple[Stage, ...] = (
    Stage("loudness", _levels),
    Stage("clipping", _clipping),
    Stage("silence", _silence),
    Stage("segments", _segments),
    Stage("pitch", _pitch),
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


@asynccontextmanager
async def scratch_file() -> AsyncIterator[IO[bytes]]:
    """A temporary file opened and deleted in worker threads (both touch the disk)."""
    handle = await anyio.to_thread.run_sync(partial(tempfile.NamedTemporaryFile, prefix="ysa-"))
    try:
        yield handle
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(handle.close)


async def fetch_and_decode(
    s3: S3Client,
    *,
    request: AnalyzeRequest,
    max_bytes: int,
    max_duration_seconds: float,
    limiter: anyio.CapacityLimiter,
) -> tuple[DecodedAudio, int]:
    """Download the object to a scratch file and decode it; the file is gone on return."""
    async with scratch_file() as scratch:
        size = await download_object(
            s3, bucket=request.bucket, key=request.key, dest=scratch, max_bytes=max_bytes
        )
        audio = await anyio.to_thread.run_sync(
            partial(decode_file, Path(scratch.name), max_duration_seconds=max_duration_seconds),
            limiter=limiter,
        )
    return audio, size


async def analyse(
    audio: DecodedAudio,
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
        fields.update(await anyio.to_thread.run_sync(stage.run, audio, limiter=limiter))
        async for tick in pacing.wait_for(low=low, high=high, stage=stage.name):
            yield tick
        yield Progress(high, stage.name)
        low = high
    yield AnalysisResult(
        job_id=request.job_id,
        token_id=request.token_id,
        key=request.key,
        bytes=size,
        duration_ms=audio.duration_ms,
        sample_rate=audio.sample_rate,
        channels=audio.channels,
        sample_width=audio.sample_width,
        **fields,
    )
