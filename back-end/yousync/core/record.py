"""A job's hash, parsed once: the snapshot plus the internal markers the processes leave in it.

The hash is flat strings (the wire format the Lua script and every reader share). `JobStore.get`
and `AsyncJobStore.get` turn it into a `JobRecord`, so callers read typed attributes instead of
string keys; nothing here writes, and the field names below are exactly those of the hash.

Markers and who writes them:

    task_id, sha256, size_bytes, source_format,   the API, when it accepts an upload
    filename, deduplicated_from                   (deduplicated_from: identical-upload answer)
    spool_path, spool_host | staged_key           the API: where the upload waits (spool | S3)
    callback_url                                  the API: the upload's own callback target
    task_id, deliveries (reset)                   the API, when a job is retried
    worker_pid, deliveries                        the worker, at each delivery of the task
    prepared_{path,extension,content_type,size},  the worker, after preparing the audio
    duration_ms
    upload_started, s3_key                        the worker, around the S3 upload
    last_event_id                                 the write script, on every write
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from yousync.core.models import JobSnapshot, JobStatus

# Every hash field that is not a snapshot field (yousync.core.models.SNAPSHOT_FIELDS).
PREPARED_FIELDS = ("prepared_path", "prepared_extension", "prepared_content_type", "prepared_size")
MARKER_FIELDS: tuple[str, ...] = (
    "task_id",
    "spool_path",
    "spool_host",
    "staged_key",
    "source_format",
    "filename",
    "sha256",
    "size_bytes",
    "deduplicated_from",
    "callback_url",
    "deliveries",
    "worker_pid",
    *PREPARED_FIELDS,
    "duration_ms",
    "upload_started",
    "s3_key",
    "last_event_id",
)


@dataclass(frozen=True)
class PreparedFile:
    """The stored form of the upload, written by the prepare stage (`prepared_*` markers)."""

    path: Path
    extension: str
    content_type: str
    size: int

    def markers(self) -> dict[str, str]:
        """The hash fields that record this file (for `set_markers`), in PREPARED_FIELDS' order."""
        values = (str(self.path), self.extension, self.content_type, str(self.size))
        return dict(zip(PREPARED_FIELDS, values, strict=True))

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> PreparedFile | None:
        """None unless all four markers are there (one HSET writes them together)."""
        path, extension, content_type, size = (fields.get(name, "") for name in PREPARED_FIELDS)
        if not (path and extension and content_type and size):
            return None
        return cls(path=Path(path), extension=extension, content_type=content_type, size=int(size))


@dataclass(frozen=True)
class JobRecord:
    """One job as its hash holds it. Absent and empty fields read as None (numbers as 0)."""

    snapshot: JobSnapshot
    task_id: str | None = None
    # Where the upload waits for the worker: a spool file on `spool_host`, or an S3 object.
    spool_path: Path | None = None
    spool_host: str | None = None
    staged_key: str | None = None
    source_format: str | None = None
    filename: str | None = None
    sha256: str | None = None
    size_bytes: int = 0
    deduplicated_from: str | None = None
    # The upload's own callback target (checked at upload); None: CALLBACK_URL, if set.
    callback_url: str | None = None
    # Deliveries of the task that started and have not ended (the poison-pill count).
    deliveries: int = 0
    worker_pid: int | None = None
    prepared: PreparedFile | None = None
    duration_ms: int | None = None
    # Set before the S3 upload starts; `s3_key` once it finished.
    upload_started: bool = False
    s3_key: str | None = None
    last_event_id: str | None = None

    @property
    def job_id(self) -> str:
        return self.snapshot.job_id

    @property
    def token_id(self) -> str:
        return self.snapshot.token_id

    @property
    def status(self) -> JobStatus:
        return self.snapshot.status

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> JobRecord:
        """Parse a decoded hash (HGETALL); raises if the snapshot part is incomplete."""

        def text(name: str) -> str | None:
            return fields.get(name) or None

        def number(name: str) -> int | None:
            value = fields.get(name)
            return int(value) if value else None

        spool_path = text("spool_path")
        return cls(
            snapshot=JobSnapshot.from_fields(fields),
            task_id=text("task_id"),
            spool_path=Path(spool_path) if spool_path else None,
            spool_host=text("spool_host"),
            staged_key=text("staged_key"),
            source_format=text("source_format"),
            filename=text("filename"),
            sha256=text("sha256"),
            size_bytes=number("size_bytes") or 0,
            deduplicated_from=text("deduplicated_from"),
            callback_url=text("callback_url"),
            deliveries=number("deliveries") or 0,
            worker_pid=number("worker_pid"),
            prepared=PreparedFile.from_fields(fields),
            duration_ms=number("duration_ms"),
            # Written as "1"; any other non-empty value counted as set before this parser too.
            upload_started=bool(fields.get("upload_started")),
            s3_key=text("s3_key"),
            last_event_id=text("last_event_id"),
        )
