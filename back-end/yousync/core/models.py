"""Job state as the API contract names it: statuses and the snapshot (stages: stages.py)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel

from yousync.core.stages import Stage


class JobStatus(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    # Only ever the last event of a job's stream, sent as its record is removed (DELETE); no
    # record holds it.
    DELETED = "deleted"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES

    @property
    def ends_stream(self) -> bool:
        """A job's SSE stream (and a long-poll) ends after this event: a terminal status, or
        `deleted`, after which there is nothing more to follow."""
        return self in TERMINAL_STATUSES or self is JobStatus.DELETED


# The analysis task's name, as the broker carries it: the API publishes by it and the worker
# registers under it. Never rename it: messages queued during a deploy carry the old name.
ANALYZE_TASK = "tasks.audio_tasks.analyze_audio"
# Task message header: epoch seconds at which the task was published, by the publisher's clock
# (set in core/broker.py, read by observability/broker_queues.py for the queue's age).
PUBLISHED_AT_HEADER = "published_at"

TERMINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})


# The hash and every stream entry store snapshot fields as strings; these are the fields whose
# string form is JSON.
_JSON_FIELDS = frozenset({"result", "error", "callback"})


class JobError(BaseModel):
    code: str
    message: str
    retryable: bool


class CallbackState(BaseModel):
    """The completion callback of the job's latest end: `pending` (being attempted),
    `delivered`, or `failed` (dead-lettered after the last attempt; replayable)."""

    status: Literal["pending", "delivered", "failed"]
    attempts: int


class JobSnapshot(BaseModel):
    """The body of the result endpoint and of every SSE event."""

    job_id: str
    token_id: str
    status: JobStatus
    progress: int
    stage: Stage
    message: str
    eta_seconds: float | None = None
    s3_url: str | None = None
    result: dict[str, Any] | None = None
    error: JobError | None = None
    created_at: str
    updated_at: str
    # Beyond the seed's fields: stall marker and retry visibility.
    stalled: bool = False
    attempt: int = 0
    next_retry_in: float | None = None
    deduplicated: bool = False
    # Present when the job has a callback target (CALLBACK_URL or the upload's own).
    callback: CallbackState | None = None

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> JobSnapshot:
        """Rebuild a snapshot from the flat string fields of the hash or a stream entry."""
        values: dict[str, Any] = {}
        for name in SNAPSHOT_FIELDS:
            raw = fields.get(name, "")
            if raw == "":
                continue
            values[name] = json.loads(raw) if name in _JSON_FIELDS else raw
        return cls.model_validate(values)


# Snapshot fields in contract order, as the model declares them.
SNAPSHOT_FIELDS: tuple[str, ...] = tuple(JobSnapshot.model_fields)


def encode_fields(values: dict[str, Any]) -> dict[str, str]:
    """Flatten snapshot values to the strings Redis stores; None becomes "" (absent)."""
    encoded: dict[str, str] = {}
    for name, value in values.items():
        if value is None:
            encoded[name] = ""
        elif name in _JSON_FIELDS:
            encoded[name] = json.dumps(value, separators=(",", ":"))
        elif isinstance(value, bool):
            encoded[name] = "1" if value else "0"
        else:
            encoded[name] = str(value)
    return encoded
