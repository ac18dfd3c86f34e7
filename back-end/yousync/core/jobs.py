"""Job state and events in Redis: one hash, one Stream, one pub/sub notification per change.

Every state change runs as one Lua script, so a reader never sees a hash without its event, an
event without its notification, a progress that went backwards, or a change after a terminal
state (a redelivered task or a late byte callback simply gets `Refused`). The sync store serves
the Celery worker; the async store serves the API. Both share the script and argument building.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import redis
import redis.asyncio as aioredis
from pydantic import ValidationError

from yousync.core import keys
from yousync.core.config import Settings
from yousync.core.errors import StageError
from yousync.core.models import (
    SNAPSHOT_FIELDS,
    TERMINAL_STATUSES,
    JobSnapshot,
    JobStatus,
    encode_fields,
)
from yousync.core.record import JobRecord
from yousync.core.stages import Stage

_WRITE_SCRIPT = (
    resources.files(__package__)
    .joinpath("job_write.lua")
    .read_text(encoding="utf-8")
    .replace(
        "--[[TERMINAL]]",
        ", ".join(f"{status.value} = true" for status in sorted(TERMINAL_STATUSES)),
    )
)

_DELETE_SCRIPT = resources.files(__package__).joinpath("job_delete.lua").read_text(encoding="utf-8")

# A dedupe entry lives no longer than the record it points at (which expires RESULT_RETENTION_
# SECONDS after this same completion): never set for a job deleted meanwhile.
_REMEMBER_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HGET', KEYS[1], 'deleting') == '1' then
  return 0
end
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
return 1
"""

# Internal markers live in the same hash but never reach an event. A job being deleted takes
# none (as the job-state script refuses it any write).
_SET_MARKERS_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HGET', KEYS[1], 'deleting') == '1' then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""


IDEMPOTENCY_TTL = 24 * 3600


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Refused(Exception):
    """A state change the job's current state does not allow (terminal, missing, decrease)."""

    def __init__(self, job_id: str, reason: str) -> None:
        super().__init__(f"job {job_id}: {reason}")
        self.job_id = job_id
        self.reason = reason


@dataclass(frozen=True)
class Event:
    """One Stream entry: its id is the SSE event id, its fields the snapshot."""

    id: str
    fields: dict[str, str]

    @property
    def status(self) -> JobStatus:
        return JobStatus(self.fields["status"])

    def snapshot(self) -> JobSnapshot:
        return JobSnapshot.from_fields(self.fields)


def _write_args(
    settings: Settings, mode: str, job_id: str, token_id: str, values: dict[str, Any]
) -> tuple[list[str], list[str]]:
    fields = encode_fields({**values, "updated_at": now_iso()})
    argv = [
        mode,
        str(settings.active_job_ttl_seconds),
        str(settings.job_ttl_seconds),
        str(settings.events_maxlen),
        keys.EVENTS_CHANNEL,
        _SNAPSHOT_FIELDS_JSON,
        _callback_settings_json(settings),
    ]
    for name, value in fields.items():
        argv += [name, value]
    key_list = [
        *_job_keys(job_id, token_id),
        keys.METRICS_JOBS_FINISHED,
        keys.job_callbacks(job_id),
        keys.CALLBACKS_DUE,
    ]
    return key_list, argv


def _job_keys(job_id: str, token_id: str) -> list[str]:
    """The keys every write of a job touches, as both scripts take them first: the hash, its
    events, the token's index and feed, the active set."""
    return [
        keys.job(job_id),
        keys.job_events(job_id),
        keys.token_jobs(token_id),
        keys.token_events(token_id),
        keys.ACTIVE_JOBS,
    ]


def callback_record_ttl(settings: Settings) -> int:
    """How long a delivery's record lives (until it is dead-lettered, which keeps it): past
    its last attempt (CALLBACK_GIVE_UP_SECONDS, plus one retry interval for an attempt that
    was due just then) by the job's own retention, so a delivered callback can be looked up
    as long as the job's record can."""
    return math.ceil(
        settings.callback_give_up_seconds
        + settings.callback_retry_max_seconds
        + settings.job_ttl_seconds
    )


def _callback_settings_json(settings: Settings) -> str:
    """What the write script needs to queue a job end's callback (ARGV[7])."""
    return json.dumps(
        {
            "url": settings.callback_url,
            "prefix": keys.callback(""),
            "ttl": callback_record_ttl(settings),
        }
    )


_SNAPSHOT_FIELDS_JSON = "[" + ",".join(f'"{name}"' for name in SNAPSHOT_FIELDS) + "]"


def _initial_values(job_id: str, token_id: str, markers: dict[str, Any]) -> dict[str, Any]:
    created = now_iso()
    return {
        "job_id": job_id,
        "token_id": token_id,
        "status": JobStatus.QUEUED,
        "progress": 0,
        "stage": Stage.QUEUED,
        "message": "Upload received; waiting for a worker",
        "created_at": created,
        **markers,
    }


def _checked(job_id: str, reply: list[Any]) -> str:
    ok, detail = reply
    detail = detail.decode() if isinstance(detail, bytes) else str(detail)
    if int(ok) != 1:
        raise Refused(job_id, detail)
    return detail


def decode_mapping(mapping: dict[Any, Any]) -> dict[str, str]:
    """A hash as redis-py returns it (bytes, or str on a decoding client) as str to str."""
    return {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in mapping.items()
    }


@dataclass(frozen=True)
class StreamRead:
    """One read of an event Stream: every entry after `after` (exclusive) when it is given,
    else the newest `count` entries. Results are oldest first. Hashable, so identical reads
    asked for at once can share one answer."""

    stream_key: str
    count: int = 1
    after: str | None = None


class UnreadableRecord(ValueError):
    """A job's hash this release cannot parse: written by a newer release during a rolling
    deploy (a stage it does not know), or damaged. Readers that walk many jobs skip it."""


def _record(mapping: dict[Any, Any]) -> JobRecord | None:
    """The job's hash parsed once; None when there is no hash (expired, deleted, never made)."""
    if not mapping:
        return None
    try:
        return JobRecord.from_fields(decode_mapping(mapping))
    except ValidationError as exc:
        raise UnreadableRecord(str(exc)) from exc


def _events(entries: Sequence[Any] | None) -> list[Event]:
    return [
        Event(
            id=entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
            fields=decode_mapping(f),
        )
        for entry_id, f in entries or ()
    ]


class JobStore:
    """Blocking store for the Celery worker (one connection pool per worker process)."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self._client = client
        self._settings = settings
        self._write = client.register_script(_WRITE_SCRIPT)
        self._set_markers = client.register_script(_SET_MARKERS_SCRIPT)
        self._remember = client.register_script(_REMEMBER_SCRIPT)

    def get(self, job_id: str) -> JobRecord | None:
        return _record(self._client.hgetall(keys.job(job_id)))

    def ping(self) -> bool:
        return bool(self._client.ping())

    def update(self, job_id: str, token_id: str, **values: Any) -> str:
        """Write a change and its event; returns the event id or raises `Refused`."""
        key_list, argv = _write_args(self._settings, "update", job_id, token_id, values)
        return _checked(job_id, self._write(keys=key_list, args=argv))

    def reopen(self, job_id: str, token_id: str, **values: Any) -> str:
        key_list, argv = _write_args(self._settings, "reopen", job_id, token_id, values)
        return _checked(job_id, self._write(keys=key_list, args=argv))

    def fail(self, job_id: str, error: StageError, *, retryable: bool) -> str | None:
        """Ends the job `failed`; a job already terminal (or gone) keeps what it has. Returns
        None when written, else why not ('missing': gone or claimed by a DELETE; 'terminal')."""
        job = self.get(job_id)
        if job is None:
            return "missing"
        try:
            self.update(
                job_id,
                job.token_id,
                status=JobStatus.FAILED,
                message=error.message,
                error={"code": error.code, "message": error.message, "retryable": retryable},
                eta_seconds=None,
            )
        except Refused as refused:
            return refused.reason
        return None

    def set_markers(self, job_id: str, **markers: Any) -> bool:
        flat = [item for pair in encode_fields(markers).items() for item in pair]
        return bool(self._set_markers(keys=[keys.job(job_id)], args=flat))

    def defer_deletion(self, prefixes: list[str]) -> None:
        """S3 prefixes of a deleted job S3 could not clear, for `retry_pending_deletions`."""
        if prefixes:
            self._client.sadd(keys.PENDING_DELETIONS, *prefixes)

    def remember_result(self, token_id: str, sha256: str, job_id: str) -> bool:
        """An identical upload of this token within DEDUPE_WINDOW_SECONDS gets this job's
        result at once. Called right after the completing write, which set the record's TTL to
        RESULT_RETENTION_SECONDS: a window longer than that is cut to it, so the entry never
        outlives the record it points at. False when not remembered (window 0, job deleted)."""
        window = min(self._settings.dedupe_window_seconds, self._settings.job_ttl_seconds)
        if window <= 0:
            return False
        return bool(
            self._remember(
                keys=[keys.job(job_id), keys.dedupe(token_id, sha256)], args=[job_id, window]
            )
        )

    def count_delivery(self, job_id: str, delta: int) -> int:
        """In-flight delivery counter, kept only while the job exists."""
        with self._client.pipeline(transaction=True) as pipe:
            pipe.exists(keys.job(job_id))
            pipe.hincrby(keys.job(job_id), "deliveries", delta)
            exists, value = pipe.execute()
        if not exists:
            self._client.delete(keys.job(job_id))  # HINCRBY must not create a stray hash
        return int(value)

    def stage_history(self) -> dict[str, float]:
        """Mean stage durations by size bucket, for ETAs of stages not yet started."""
        raw = decode_mapping(self._client.hgetall(keys.STAGE_STATS))
        return {name: float(value) for name, value in raw.items()}

    def record_stage(self, name: str, seconds: float, *, weight: float = 0.3) -> None:
        """Exponentially weighted: recent jobs count most; a lost race between two workers
        only drops one sample."""
        previous = self._client.hget(keys.STAGE_STATS, name)
        value = seconds if previous is None else (1 - weight) * float(previous) + weight * seconds
        self._client.hset(keys.STAGE_STATS, name, f"{value:.4f}")


class AsyncJobStore:
    """Non-blocking store for the API's handlers and SSE streams."""

    def __init__(self, client: aioredis.Redis, settings: Settings) -> None:
        self._client = client
        self._settings = settings
        self._write = client.register_script(_WRITE_SCRIPT)
        self._set_markers = client.register_script(_SET_MARKERS_SCRIPT)
        self._delete = client.register_script(_DELETE_SCRIPT)

    async def create(self, job_id: str, token_id: str, **markers: Any) -> str:
        """A job with `deduplicated_from` joins that original's dedups set (the holders of its
        stored object) in the same script; `Refused` ('original_gone') when the original is no
        longer completed or a DELETE has claimed it: then nothing may answer with its object."""
        values = _initial_values(job_id, token_id, markers)
        key_list, argv = _write_args(self._settings, "create", job_id, token_id, values)
        original = markers.get("deduplicated_from")
        if original:  # last: the script finds them there whatever keys precede them
            key_list += [keys.job(str(original)), keys.job_dedups(str(original))]
        return _checked(job_id, await self._write(keys=key_list, args=argv))

    async def claim_idempotency(self, token_id: str, key: str, job_id: str) -> str | None:
        """Claim `key` for a new job; returns the value already there when it was taken."""
        redis_key = keys.idempotency(token_id, key)
        if await self._client.set(redis_key, f"pending:{job_id}", nx=True, ex=IDEMPOTENCY_TTL):
            return None
        existing = await self._client.get(redis_key)
        return existing.decode() if isinstance(existing, bytes) else existing

    async def settle_idempotency(self, token_id: str, key: str, job_id: str | None) -> None:
        """The claimed request ended: remember its job (24 h), or free the key on failure."""
        redis_key = keys.idempotency(token_id, key)
        if job_id is None:
            await self._client.delete(redis_key)
        else:
            await self._client.set(redis_key, job_id, ex=IDEMPOTENCY_TTL)

    async def deduplicate(self, token_id: str, sha256: str) -> JobRecord | None:
        """The completed job of an identical earlier upload of this token, if still known."""
        job_id = await self._client.get(keys.dedupe(token_id, sha256))
        if not job_id:
            return None
        job = await self.get(job_id.decode() if isinstance(job_id, bytes) else job_id)
        return job if job is not None and job.status == JobStatus.COMPLETED else None

    async def claim_delete(self, job: JobRecord) -> int:
        """First step of a DELETE: mark the job `deleting` (no upload deduplicates onto it from
        now on) and count the other live jobs holding its stored object. Raises `Refused`
        ('missing') when the record is gone."""
        root = job.deduplicated_from or job.job_id
        reply = await self._delete(
            keys=[keys.job(job.job_id), keys.job_dedups(root)],
            args=["claim", job.job_id, root, keys.job("")],
        )
        return int(_checked(job.job_id, reply))

    async def remove(self, job: JobRecord) -> str:
        """Last step of a DELETE (job_delete.lua): the `deleted` event, then every key of the
        job. Returns the event id, '' when the record expired since the claim (nothing to
        send; the keys that outlive a record — deliveries, dedupe entry, indexes — still go)."""
        job_id, token_id = job.job_id, job.token_id
        root = job.deduplicated_from or job_id
        key_list = [
            *_job_keys(job_id, token_id),
            keys.dedupe(token_id, job.sha256) if job.sha256 else keys.job(job_id),
            keys.job_callbacks(job_id),
            keys.CALLBACKS_DUE,
            keys.CALLBACKS_DEAD,
            keys.job_dedups(job_id),
            keys.job_dedups(root),
        ]
        argv = [
            "delete",
            job_id,
            token_id,
            now_iso(),
            keys.EVENTS_CHANNEL,
            str(self._settings.events_maxlen),
            str(self._settings.active_job_ttl_seconds),
            keys.callback(""),
            keys.job(""),
            root,
        ]
        return _checked(job_id, await self._delete(keys=key_list, args=argv))

    async def defer_deletion(self, prefixes: list[str]) -> None:
        """S3 prefixes a DELETE could not clear, for the `retry_pending_deletions` sweep."""
        if prefixes:
            await self._client.sadd(keys.PENDING_DELETIONS, *prefixes)

    async def reopen(self, job_id: str, token_id: str, **values: Any) -> str:
        key_list, argv = _write_args(self._settings, "reopen", job_id, token_id, values)
        return _checked(job_id, await self._write(keys=key_list, args=argv))

    async def update(self, job_id: str, token_id: str, **values: Any) -> str:
        key_list, argv = _write_args(self._settings, "update", job_id, token_id, values)
        return _checked(job_id, await self._write(keys=key_list, args=argv))

    async def mark_stalled(self, job_id: str, token_id: str) -> str:
        key_list, argv = _write_args(self._settings, "stall", job_id, token_id, {"stalled": True})
        return _checked(job_id, await self._write(keys=key_list, args=argv))

    async def set_markers(self, job_id: str, **markers: Any) -> bool:
        flat = [item for pair in encode_fields(markers).items() for item in pair]
        return bool(await self._set_markers(keys=[keys.job(job_id)], args=flat))

    async def delete(self, job_id: str, token_id: str) -> None:
        """Undo a job whose enqueue failed, so no half-made job is left behind."""
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.delete(keys.job(job_id), keys.job_events(job_id))
            pipe.zrem(keys.token_jobs(token_id), job_id)
            await pipe.execute()

    async def get(self, job_id: str) -> JobRecord | None:
        return _record(await self._client.hgetall(keys.job(job_id)))

    async def _read_pipeline(self, reads: Sequence[StreamRead]) -> list[Any]:
        async with self._client.pipeline(transaction=False) as pipe:
            for read in reads:
                if read.after is not None:
                    pipe.xrange(read.stream_key, min=f"({read.after}")
                else:
                    pipe.xrevrange(read.stream_key, count=read.count)
            return await pipe.execute()

    async def read_streams(self, reads: Sequence[StreamRead]) -> list[list[Event]]:
        """Many Stream reads in one round trip (a pipeline without MULTI: each read stands
        alone). Why: a storm of stream starts costs one connection and one round trip per
        batch instead of one pooled connection per client (see api/streaming/read_batcher)."""
        try:
            replies = await self._read_pipeline(reads)
        except redis.ConnectionError:
            # Unlike a single command, a pipeline sent on a connection that Redis closed (it
            # restarted) fails instead of reconnecting (redis-py 8.1): once more on a new one.
            replies = await self._read_pipeline(reads)
        return [
            _events(reply) if read.after is not None else _events(reply)[::-1]
            for read, reply in zip(reads, replies, strict=True)
        ]
