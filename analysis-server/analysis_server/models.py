"""The request and result bodies of POST /analyze (also what /openapi.json publishes)."""

from __future__ import annotations

from pydantic import BaseModel, Field

# Bumped whenever a feature's definition changes, so stored results can be told apart.
ANALYSIS_VERSION = "1"


class AnalyzeRequest(BaseModel):
    job_id: str = Field(min_length=1, max_length=128)
    token_id: str = Field(min_length=1, max_length=128)
    # S3's own limits: bucket names are 3-63 characters, keys 1-1024 bytes.
    bucket: str = Field(min_length=3, max_length=63)
    key: str = Field(min_length=1, max_length=1024)


class ErrorBody(BaseModel):
    """Every error answer, request validation included (not FastAPI's default shape)."""

    detail: str
    code: str


class VoicedSegment(BaseModel):
    start_ms: int
    end_ms: int


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
    peak_dbfs: float | None
    silence_ratio: float = Field(ge=0, le=1)
    clipping_ratio: float = Field(ge=0, le=1)
    voiced_segments: list[VoicedSegment]
    pitch_hz: float | None = Field(description="Median F0 of periodic frames; null if none.")
