"""The one settings object of the analysis server.

Values come from the environment first, then from the repository's `.env` (local defaults only),
so the server is configured exactly like the API and the worker and a test changes its behaviour
by changing the environment of the process it starts. Nothing else in the package reads the
environment.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from media_guard import DecodeLimits, ToolLimits


def _home_dir() -> Path:
    """Where `.env` is read: `YOUSYNC_HOME` when set; else the checkout this module runs from
    (an editable install); else the working directory (an installed wheel's site-packages is
    no place for a .env)."""
    explicit = os.environ.get("YOUSYNC_HOME")
    if explicit:
        return Path(explicit).resolve()
    checkout = Path(__file__).resolve().parents[2]  # analysis-server/analysis_server/config.py
    if (checkout / "analysis-server" / "pyproject.toml").is_file():
        return checkout
    return Path.cwd()


HOME_DIR = _home_dir()

# Values that are fine on a laptop and wrong anywhere else (.env ships them).
_LOCAL_DUMMIES = {"local-dummy-key", "local-dummy-secret", "local-only-analysis-secret"}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=HOME_DIR / ".env", env_file_encoding="utf-8", extra="ignore"
    )

    environment: Literal["dev", "test", "prod"] = "dev"

    # Empty endpoint means AWS itself; empty keys mean botocore's default chain (instance role).
    s3_endpoint_url: str = ""
    aws_region: str = "us-east-1"
    aws_access_key_id: str = ""
    aws_secret_access_key: str = ""
    # The only bucket this server reads or writes: callers name keys, never buckets.
    s3_bucket: str = "yousync-audio"
    s3_connect_timeout_seconds: float = Field(3.0, gt=0)
    s3_read_timeout_seconds: float = Field(30.0, gt=0)
    # Few attempts: the worker retries the whole call with backoff, so retrying long here too
    # would only multiply the wait before a 503 reaches it.
    s3_max_attempts: int = Field(2, ge=1)
    readyz_timeout_seconds: float = Field(2.0, gt=0)

    # A floor on the wall time of one analysis, counted from the request's arrival. The real
    # dubbing models this service stands in for take 30 s to 2 min, while our signal features
    # take milliseconds; demos and tests set this (e.g. 1.0) so progress can be watched end to
    # end. It is pure waiting, not work: the result is computed first and does not change with
    # it; during the wait the NDJSON stream keeps sending progress lines (every
    # `analysis_progress_interval_seconds`), rising smoothly towards 0.95. 0 = no floor.
    analysis_min_seconds: float = Field(0.0, ge=0)
    analysis_progress_interval_seconds: float = Field(0.2, gt=0)
    # Bounds memory and temp disk per request: larger objects are refused before download.
    analysis_max_bytes: int = Field(200 * 1024 * 1024, gt=0)
    # Compressed audio is decoded only this far (+1 s to detect "longer"), so a tiny file
    # that expands to hours of PCM cannot exhaust memory.
    analysis_max_duration_seconds: float = Field(600.0, gt=0)
    # Decodes are converted by ffmpeg to at most this many channels and this rate before any
    # sample reaches Python: what the header claims never sizes the memory a decode takes.
    analysis_max_channels: int = Field(2, ge=1, le=8)
    analysis_max_sample_rate: int = Field(48000, ge=8000)
    # Address-space limit (RLIMIT_AS) of every ffmpeg/ffprobe child (ffmpeg maps ≈ 300 MB of
    # shared libraries at start).
    ffmpeg_max_memory_mb: int = Field(1024, ge=512)
    # Bearer token every caller but /healthz must send (the worker's ANALYSIS_SHARED_SECRET).
    # Required: the server refuses to start without one, and refuses `.env`'s value in prod.
    analysis_shared_secret: str = Field("", min_length=1)
    # Decodes and feature passes running at once (each holds a decoded clip in memory).
    analysis_max_concurrency: int = Field(4, ge=1)
    # How far apart a take and its reference may start and still be aligned: the lags the
    # cross-correlation searches. Recordings start when the user presses the button, so a
    # second or two of lead-in is normal; beyond 5 s an alignment is more likely a coincidence.
    sync_max_offset_ms: float = Field(5000.0, gt=0)

    @model_validator(mode="after")
    def _refuse_local_dummies_in_prod(self) -> Settings:
        if self.environment != "prod":
            return self
        unsafe = [
            name
            for name in ("aws_access_key_id", "aws_secret_access_key", "analysis_shared_secret")
            if getattr(self, name) in _LOCAL_DUMMIES
        ]
        if unsafe:
            raise ValueError(f"refusing local default values in prod: {', '.join(unsafe)}")
        return self

    def decode_limits(self) -> DecodeLimits:
        """The bounds of every decode (media_guard), takes and references alike."""
        return DecodeLimits(
            max_seconds=self.analysis_max_duration_seconds,
            max_channels=self.analysis_max_channels,
            max_sample_rate=self.analysis_max_sample_rate,
            tool=ToolLimits(
                timeout_seconds=120.0, address_space_bytes=self.ffmpeg_max_memory_mb * 1024 * 1024
            ),
        )


@lru_cache
def get_settings() -> Settings:
    return Settings()
