"""The request and result bodies of POST /analyze (also what /openapi.json publishes)."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Bumped whenever a feature's definition changes, so stored results can be told apart.
# 2: integrated loudness, pitch range, speech rate, quality warnings, sync against a reference.
ANALYSIS_VERSION = "2"

# Token ids become part of an S3 key (references/{token_id}): letters, digits and . _ - only,
# so no id can climb out of the prefix or need escaping.
TOKEN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


# Where the worker stores a job's prepared audio: `audio/{token_id}/{job_id}.{extension}`. A
# request may name only that key of its own job, so a caller cannot read any other object.
TAKE_KEY_PREFIX = "audio/"
TAKE_EXTENSIONS = ("flac", "mp3", "ogg", "wav", "m4a", "aac", "webm")


def take_key(token_id: str, job_id: str, extension: str) -> str:
    return f"{TAKE_KEY_PREFIX}{token_id}/{job_id}.{extension}"


class AnalyzeRequest(BaseModel):
    """The bucket is the server's own (S3_BUCKET); a body naming one is refused, not ignored,
    so no caller can believe it chose where the audio is read from."""

    model_config = ConfigDict(extra="forbid")

    job_id: str = Field(pattern=TOKEN_ID_PATTERN)
    token_id: str = Field(pattern=TOKEN_ID_PATTERN)
    key: str = Field(
        min_length=1,
        max_length=1024,
        description="audio/{token_id}/{job_id}.{extension}: the job's own prepared take.",
    )

    @model_validator(mode="after")
    def _key_is_the_jobs_take(self) -> AnalyzeRequest:
        pattern = (
            re.escape(take_key(self.token_id, self.job_id, ""))
            + "(?:"
            + "|".join(TAKE_EXTENSIONS)
            + ")"
        )
        if not re.fullmatch(pattern, self.key):
            raise ValueError("key must be audio/{token_id}/{job_id}.{extension} of this job")
        return self


class ErrorBody(BaseModel):
    """Every error answer, request validation included (not FastAPI's default shape)."""

    detail: str
    code: str


class VoicedSegment(BaseModel):
    start_ms: int
    end_ms: int


class QualityWarning(BaseModel):
    code: str = Field(description="too_quiet, clipped, mostly_silence or too_short.")
    message: str = Field(description="Plain language, fit to show the person who recorded.")


class Quality(BaseModel):
    ok: bool = Field(description="True when there is nothing to warn about.")
    warnings: list[QualityWarning]


class SyncComponents(BaseModel):
    """Each in [0, 1]; the score is their weighted geometric mean × 100."""

    envelope: float = Field(description="Squared correlation of the aligned energy envelopes.")
    timing: float = Field(description="1 / (1 + drift / 80 ms), drift from DTW after alignment.")
    sound_balance: float = Field(description="Shorter over longer total time with sound.")


class SyncResult(BaseModel):
    reference_duration_ms: int
    offset_ms: float = Field(
        description="How late the take starts against the reference (negative: early), from "
        "cross-correlating energy envelopes. A constant offset does not lower the score."
    )
    envelope_correlation: float = Field(ge=-1, le=1)
    timing_deviation_ms: float = Field(
        ge=0, description="Mean drift of the DTW path from perfect timing, after alignment."
    )
    sync_score: float = Field(ge=0, le=100)
    components: SyncComponents


class AnalysisResult(BaseModel):
    job_id: str
    token_id: str
    key: str
    bytes: int = Field(description="Size of the analysed object as stored.")
    analysis_version: str = ANALYSIS_VERSION

    duration_ms: int
    sample_rate: int
    channels: int
    sample_width: int = Field(description="Bytes per sample of the decoded PCM.")
    loudness_dbfs: float | None = Field(description="RMS level of the whole clip; null if silent.")
    loudness_lufs: float | None = Field(
        description="Integrated loudness (ITU-R BS.1770 / EBU R 128 gating); null if silent "
        "or shorter than one 400 ms block."
    )
    peak_dbfs: float | None
    silence_ratio: float = Field(ge=0, le=1)
    clipping_ratio: float = Field(ge=0, le=1)
    voiced_segments: list[VoicedSegment]
    segments_per_minute: float | None = Field(
        description="Speech-rate proxy: voiced segments per minute of audio."
    )
    pitch_hz: float | None = Field(description="Median F0 of periodic frames; null if none.")
    pitch_low_hz: float | None = Field(description="5th percentile of F0 over periodic frames.")
    pitch_high_hz: float | None = Field(description="95th percentile of F0 over periodic frames.")
    quality: Quality
    sync: SyncResult | None = Field(
        description="Only when a reference is stored for the token (PUT /references/{token_id})."
    )


class ReferenceInfo(BaseModel):
    """What PUT /references/{token_id} stored."""

    token_id: str
    key: str
    bytes: int
    content_type: str
    duration_ms: int
    sample_rate: int
    channels: int
