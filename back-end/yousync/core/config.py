"""The one settings object of the API and the worker.

Values come from the environment first, then from the repository's `.env` (local defaults only).
Everything else in the back end asks `get_settings()`; nothing reads `os.environ` itself, so a test
or a second process changes behaviour by changing the environment of the process it starts.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from yousync.core import webhooks


def _home_dir() -> Path:
    """Where `.env` is read and relative paths (var/spool, Beat's schedule) resolve.

    `YOUSYNC_HOME` when set (the one variable read outside the settings object: it says where
    the settings file is). Otherwise the checkout this module runs from, when it is one (an
    editable install, as `make dev` and the tests use). Otherwise the working directory: an
    installed wheel lives in site-packages, which is no place for a .env or for spool files.
    """
    explicit = os.environ.get("YOUSYNC_HOME")
    if explicit:
        return Path(explicit).resolve()
    checkout = Path(__file__).resolve().parents[3]  # back-end/yousync/core/config.py
    if (checkout / "back-end" / "pyproject.toml").is_file():
        return checkout
    return Path.cwd()


HOME_DIR = _home_dir()

# Values that are fine on a laptop and wrong anywhere else (.env ships them).
_LOCAL_DUMMIES = {
    "local-dummy-key",
    "local-dummy-secret",
    "yousync:local-only",
    "local-only-analysis-secret",
    "",
}

AudioStoreFormat = Literal["original", "flac", "mp3", "ogg"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=HOME_DIR / ".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    environment: Literal["dev", "test", "prod"] = "dev"

    api_host: str = "127.0.0.1"
    api_port: int = 8000

    redis_url: str = "redis://127.0.0.1:6379/0"
    celery_broker_url: str = ""
    redis_max_connections: int = 50

    s3_bucket: str = "yousync-audio"
    s3_endpoint_url: str = ""
    aws_region: str = "us-east-1"
    aws_access_key_id: str = ""
    aws_secret_access_key: str = ""
    # Part size of multipart uploads, the worker's and staging's (S3's minimum part is 5 MiB).
    s3_multipart_threshold_mb: int = Field(8, ge=5)

    analysis_server_url: str = "http://127.0.0.1:8001"
    analysis_timeout_seconds: float = 300.0
    # Sent as a bearer token on every call; the analysis server refuses requests without it.
    # Empty is refused in prod (validator below); `.env` carries a local-only value.
    analysis_shared_secret: str = ""

    spool_dir: Path = Path("var/spool")
    # Where an accepted upload waits for its worker (yousync/api/uploads/staging.py). `spool`:
    # a file in SPOOL_DIR, which every worker must be able to read (one host). `s3`: the
    # object `incoming/<job_id>` in S3_BUCKET, sent while it arrives; workers on any host fetch
    # it. An API setting: a job records where its upload is, and any worker follows the record.
    upload_staging: Literal["spool", "s3"] = "spool"
    max_upload_mb: float = 100.0
    audio_store_format: AudioStoreFormat = "flac"
    # Preparation (worker/audio.py). Ceilings, not targets (0 = keep the source's): a take is
    # downmixed to at most this many channels and resampled down to at most this rate, never
    # up. Mono by default: a dub is one voice, and mono halves what is stored.
    prepare_channels: int = Field(1, ge=0)
    prepare_sample_rate: int = Field(48000, ge=0)
    # Above this much decoded PCM (estimated by ffprobe before decoding), the worker streams
    # the file through an ffmpeg subprocess instead of decoding it into memory with pydub,
    # whose peak is ≈ 3× the decoded size (README "Analysis" has the measurements).
    prepare_stream_threshold_mb: float = Field(64.0, ge=0)
    # Longer audio fails as `audio_too_long` (not retryable) while preparing, before anything
    # goes to S3: the analysis server's own limit, so nothing is stored only to be refused.
    max_audio_duration_seconds: float = Field(600.0, gt=0)
    # Address-space limit (RLIMIT_AS) of every ffmpeg/ffprobe child: a decoder bug or a
    # crafted file cannot take the host's memory. ffmpeg maps ≈ 300 MB of libraries at start.
    ffmpeg_max_memory_mb: int = Field(1024, ge=512)

    # How long a finished job (record, events, and a failed job's input) stays after it ended:
    # RESULT_RETENTION_SECONDS, or its older name JOB_TTL_SECONDS. One hour by default, as the
    # seed has it; days work, given a Redis that persists (README "Retention").
    job_ttl_seconds: int = Field(
        3600, gt=0, validation_alias=AliasChoices("RESULT_RETENTION_SECONDS", "JOB_TTL_SECONDS")
    )
    # An identical upload of the same token within this window answers the earlier job's result.
    dedupe_window_seconds: int = Field(3600, ge=0)
    # Prepared audio in S3 older than this many days is deleted by a Beat sweep; 0 keeps it.
    audio_retention_days: float = Field(0, ge=0)
    # While a job runs its keys live this long, so a stuck job still has a record to inspect.
    active_job_ttl_seconds: int = 86400
    events_maxlen: int = 200

    task_max_retries: int = 3
    # Deliveries that crashed their worker before a job counts as a poison pill.
    task_max_deliveries: int = 3
    # A worker that loses Redis mid-job waits this long for it, this many times, then gives up.
    redis_outage_wait_seconds: float = 60.0
    redis_outage_reruns: int = 3
    task_retry_delay: float = 60.0
    task_soft_time_limit: int = 840
    task_time_limit: int = 900
    # Must exceed task_time_limit, or Redis redelivers a running task (celery#5935).
    broker_visibility_timeout: int = 1800
    enqueue_timeout_seconds: float = 3.0
    # How often workers look for tasks of dead workers past the visibility timeout.
    broker_restore_interval_seconds: float = 10.0
    # Each worker renews its entry in the broker's Redis this often (yousync/worker/heartbeat.py);
    # an entry not renewed for three intervals is a worker gone (`yousync_workers{queue}`).
    worker_heartbeat_seconds: float = Field(10.0, gt=0)
    # Touched when a worker is ready to consume (supervisors, test fixtures).
    worker_ready_file: Path | None = Field(None, alias="YOUSYNC_WORKER_READY_FILE")

    sse_ping_seconds: float = 15.0
    sse_send_timeout_seconds: float = 30.0
    sse_retry_ms: int = 3000
    # Time streams get on shutdown to send their farewell comment (under uvicorn's graceful limit).
    sse_shutdown_grace_seconds: float = 2.0
    sse_client_queue_size: int = 64
    # The API's garbage-collection policy (yousync/api/gc_policy.py): freeze what the
    # collector tracks every N seconds; 0 leaves CPython's own schedule (startup frozen only).
    gc_freeze_every_seconds: float = Field(0.1, ge=0)
    result_max_wait_seconds: float = 60.0

    api_keys: str = ""
    stream_token_secret: str = ""
    stream_token_ttl_seconds: int = 6 * 3600
    sse_max_clients: int = 20000
    upload_max_concurrent_per_client: int = 4
    cors_origins: str = "http://127.0.0.1:8000,http://localhost:8000"
    flower_basic_auth: str = ""

    # A running job silent this long gets `stalled: true` (cleared by its next real progress).
    stall_seconds: float = 30.0
    stall_check_seconds: float = 1.0

    progress_min_interval_seconds: float = Field(0.1, ge=0)

    # Logs (observability/logging_setup.py): `text` is key=value lines, `json` one object per
    # line.
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    # prometheus-client's multiprocess mode for `uvicorn --workers N`: the directory where each
    # API process keeps its metric values, so one /metrics scrape reports every process of the
    # host (observability/multiprocess.py). The library reads this variable from the process
    # environment itself, before any of our code runs; ours reads the same variable here. Set
    # it for the API's processes only (the API's unit or Procfile line, never the shared
    # settings file: a worker would write its files there too), to a directory emptied every
    # time the supervisor starts. Unset (one process, `make dev`, the tests): as before.
    prometheus_multiproc_dir: Path | None = None

    # Celery Beat maintenance (yousync/worker/tasks/maintenance.py).
    maintenance_interval_seconds: float = Field(300.0, gt=0)
    # Exactly one Beat sends (yousync/worker/beat_scheduler.py): the sender holds a lock in
    # REDIS_URL for this long and renews it every third of it; a standby takes over within it
    # after the holder dies (at once after a clean shutdown, which releases the lock).
    beat_lock_ttl_seconds: float = Field(30.0, ge=1)
    # A spool file with no job record is an upload still arriving until it is this old.
    spool_orphan_grace_seconds: float = 600.0
    # A `queued` job untouched this long is stuck (its message was lost); `processing` jobs use
    # the hard time limit plus the longest retry backoff.
    stuck_queued_seconds: float = 3600.0
    multipart_max_age_seconds: float = 86400.0

    # Completion callbacks to the main back end (Standard Webhooks). CALLBACK_URL: the
    # deployment's receiver of every job end, trusted as the operator set it ("" = none).
    # CALLBACK_SECRET: `whsec_` + base64, up to two comma-separated (rotation: one signature
    # per secret). A per-upload target (`callback_url` field, `Callback-URL` header) must name
    # a host in CALLBACK_ALLOWED_HOSTS (comma-separated host names or host:port).
    callback_url: str = ""
    callback_secret: str = ""
    callback_allowed_hosts: str = ""
    callback_timeout_seconds: float = Field(10.0, gt=0)
    # Attempt n waits CALLBACK_RETRY_BASE_SECONDS × 4^(n-1) (±20 %), at most
    # CALLBACK_RETRY_MAX_SECONDS, until CALLBACK_GIVE_UP_SECONDS after the job ended; then the
    # delivery is dead-lettered (kept, counted in metrics, replayable).
    callback_retry_base_seconds: float = Field(5.0, gt=0)
    callback_retry_max_seconds: float = Field(3600.0, gt=0)
    callback_give_up_seconds: float = Field(86400.0, gt=0)
    # Beat sends the drain of due deliveries this often.
    callback_tick_seconds: float = Field(1.0, gt=0)

    @field_validator("spool_dir")
    @classmethod
    def _spool_dir_from_home(cls, value: Path) -> Path:
        return value if value.is_absolute() else HOME_DIR / value

    @field_validator("callback_secret")
    @classmethod
    def _callback_secrets_readable(cls, value: str) -> str:
        """A secret that cannot sign is refused at start, not found out at the first job end."""
        secrets = [secret.strip() for secret in value.split(",") if secret.strip()]
        if len(secrets) > 2:
            raise ValueError("CALLBACK_SECRET holds at most two secrets (current, next)")
        for secret in secrets:
            webhooks.secret_key(secret)
        return value

    @field_validator("callback_url")
    @classmethod
    def _callback_url_http(cls, value: str) -> str:
        if value and urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("CALLBACK_URL must be an http or https URL")
        return value

    @field_validator("prometheus_multiproc_dir", mode="before")
    @classmethod
    def _multiproc_dir_absolute(cls, value: object) -> object:
        """Empty is unset; a relative path is refused, because prometheus-client resolves it
        against each process's working directory and our code would against another."""
        if value in ("", None):
            return None
        if not Path(str(value)).is_absolute():
            raise ValueError("PROMETHEUS_MULTIPROC_DIR must be an absolute path")
        return value

    @model_validator(mode="after")
    def _refuse_local_dummies_outside_dev(self) -> Settings:
        if self.environment != "prod":
            return self
        # Empty AWS keys are fine in prod (instance role); the shipped dummies are not.
        unsafe = [
            name
            for name in ("aws_access_key_id", "aws_secret_access_key")
            if getattr(self, name) in _LOCAL_DUMMIES - {""}
        ]
        if self.flower_basic_auth in _LOCAL_DUMMIES:
            unsafe.append("flower_basic_auth")
        if self.api_keys and not self.stream_token_secret:
            unsafe.append("stream_token_secret")
        if self.analysis_shared_secret in _LOCAL_DUMMIES:
            unsafe.append("analysis_shared_secret")
        # prod never sends a callback unsigned: without a secret every delivery would be
        # retried for a day and dead-lettered, found out long after the deploy.
        if self.callbacks_enabled and not self.callback_secrets:
            unsafe.append("callback_secret")
        if unsafe:
            raise ValueError(f"refusing local default values in prod: {', '.join(unsafe)}")
        if self.task_time_limit >= self.broker_visibility_timeout:
            raise ValueError("broker_visibility_timeout must exceed task_time_limit")
        return self

    @property
    def broker_url(self) -> str:
        """The broker defaults to db 1 of REDIS_URL's server, so job state on db 0 can be
        flushed or inspected without touching Celery's queues and bindings."""
        if self.celery_broker_url:
            return self.celery_broker_url
        base, _, _db = self.redis_url.rpartition("/")
        return f"{base}/1" if _db.isdigit() else self.redis_url

    @property
    def broker_is_redis(self) -> bool:
        """Queue depth and worker heartbeats live in the broker's Redis; with RabbitMQ there is
        none (its own exporter reports its queues)."""
        return self.broker_url.startswith(("redis://", "rediss://"))

    @property
    def worker_heartbeat_ttl_seconds(self) -> float:
        """Three missed beats, so one slow Redis round trip does not count a worker gone."""
        return 3 * self.worker_heartbeat_seconds

    @property
    def prepare_stream_threshold_bytes(self) -> int:
        return int(self.prepare_stream_threshold_mb * 1024 * 1024)

    @property
    def api_key_set(self) -> frozenset[str]:
        return frozenset(key.strip() for key in self.api_keys.split(",") if key.strip())

    @property
    def stream_secret(self) -> str:
        """Outside prod an unset secret is derived from the API keys, so every local API
        process agrees on it; prod refuses an empty STREAM_TOKEN_SECRET (validator above)."""
        if self.stream_token_secret:
            return self.stream_token_secret
        return hashlib.sha256(f"yousync-stream:{self.api_keys}".encode()).hexdigest()

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def callback_secrets(self) -> list[str]:
        return [secret.strip() for secret in self.callback_secret.split(",") if secret.strip()]

    @property
    def callbacks_enabled(self) -> bool:
        """Whether any job can have a callback target: only then does Beat send the drain
        and /metrics watch the `callbacks` queue's workers."""
        return bool(self.callback_url or self.callback_allowed_hosts.strip())

    @property
    def callback_allowed_host_set(self) -> frozenset[str]:
        return frozenset(
            host.strip().lower() for host in self.callback_allowed_hosts.split(",") if host.strip()
        )

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]


@lru_cache
def get_settings() -> Settings:
    return Settings()
