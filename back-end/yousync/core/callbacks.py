"""Completion callbacks as Redis keeps them: due deliveries, their attempts, dead letters.

The job-state script (job_write.lua) queues one delivery per job end, in the same atomic step as
the end: a hash `keys.callback(id)` holding the end's snapshot (the body), the target and the
attempt count, and the id in the sorted set `keys.CALLBACKS_DUE` scored by when the next attempt
is due. Everything after that is here, one Lua script per step, so two drains on two workers
never send the same attempt and a step is never half-done:

* `claim` takes the due ids and moves each one's score to now + a lease in the same call: no
  other drain sees them while this one sends, and a drain that dies (SIGKILL) leaves them due
  again once the lease runs out, with the same id (the receiver deduplicates by it).
* `delivered` / `failed` record an attempt's outcome. `failed` counts only if the attempt
  count is still the one the claim read (an attempt that outlived its lease cannot count
  twice), and either schedules the next attempt or, past CALLBACK_GIVE_UP_SECONDS, moves the
  delivery to `keys.CALLBACKS_DEAD` and takes its expiry away (a dead letter is kept until an
  operator replays it), and the job's record's too, if it still exists: a dead-lettered job
  keeps its record until its replayed delivery goes through (which gives the record its
  JOB_TTL_SECONDS back, unless another of its deliveries is still a dead letter) or it is
  deleted. `delivered` counts whatever the counter says (the receiver has it, even from a
  drain whose lease ran out), once; it drops the body, so the job's result does not outlive
  the job's record in the delivery.
* `replay` puts dead letters back as due, attempts reset.

Each outcome also sets the job's snapshot `callback` field when the job's record still exists
and this delivery is its latest end's (a plain HSET, no event: the job is terminal and its
streams have ended; the result endpoint reads the hash).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis

from yousync.core import keys
from yousync.core.config import Settings
from yousync.core.jobs import callback_record_ttl, decode_mapping
from yousync.core.models import JobSnapshot

# Given up on (dead-lettered): the snapshot says `failed`.
DEAD = "dead"
# A lease outlasts an attempt's deadline (CALLBACK_TIMEOUT_SECONDS) by this much.
LEASE_MARGIN_SECONDS = 10.0
# A delivered record whose job's record is gone lingers this long (its body removed).
DELIVERED_GRACE_SECONDS = 300

_CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), id)
end
return {tostring(now), ids}
"""

# Shared by the outcome scripts: the job's snapshot field, only for its latest end.
_JOB_STATE = """
local function job_state(job, id, status, attempts)
  if redis.call('HGET', job, 'callback_delivery') == id then
    redis.call('HSET', job, 'callback', cjson.encode({status = status, attempts = attempts}))
  end
end
"""

# Shared by delivered and replay: a dead letter took the expiry of its job's record, events and
# set of deliveries; they get it back only when none of the job's other deliveries is still a
# dead letter (whose record a DELETE reaches through that set, and a reader through the job).
_NO_OTHER_DEAD = """
local function no_other_dead(set, dead, id)
  for _, member in ipairs(redis.call('SMEMBERS', set)) do
    if member ~= id and redis.call('ZSCORE', dead, member) then return false end
  end
  return true
end
"""

# KEYS: due, record, job, metrics, job's events, dead, job's deliveries. ARGV: id, attempts
# counted at claim, the job's retention (JOB_TTL_SECONDS), the set's retention (a record's),
# the record's retention once delivered when the job's record is gone.
_DELIVERED = (
    _JOB_STATE
    + _NO_OTHER_DEAD
    + """
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
-- A 2xx is a delivery whatever the attempt counter says: a drain whose lease ran out (another
-- one claimed the delivery meanwhile, failed, rescheduled or even dead-lettered it) was answered
-- all the same. Only a second 2xx changes nothing.
if redis.call('HGET', KEYS[2], 'status') == 'delivered' then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[6], ARGV[1])
if no_other_dead(KEYS[7], KEYS[6], ARGV[1]) then
  -- A replayed dead letter is delivered at last: its job's record, kept without expiry since
  -- the dead letter, gets its retention back.
  if redis.call('TTL', KEYS[3]) == -1 then
    redis.call('EXPIRE', KEYS[3], ARGV[3])
    redis.call('EXPIRE', KEYS[5], ARGV[3])
  end
  if redis.call('TTL', KEYS[7]) == -1 then redis.call('EXPIRE', KEYS[7], ARGV[4]) end
end
local attempts = redis.call('HINCRBY', KEYS[2], 'attempts', 1)
local t = redis.call('TIME')
redis.call('HSET', KEYS[2], 'status', 'delivered',
  'delivered_at', string.format('%d.%06d', t[1], t[2]), 'last_error', '', 'dead_at', '')
-- The body (the job's result) goes: it must not outlive the job's own retention. What is left
-- (target, attempts, times) expires with the job's record, or soon when that is gone.
redis.call('HDEL', KEYS[2], 'snapshot')
local left = redis.call('TTL', KEYS[3])
if left == -1 then left = tonumber(ARGV[3]) elseif left < 0 then left = tonumber(ARGV[5]) end
redis.call('EXPIRE', KEYS[2], left)
redis.call('HINCRBY', KEYS[4], 'delivered', 1)
job_state(KEYS[3], ARGV[1], 'delivered', attempts)
return attempts
"""
)

# KEYS: due, record, job, metrics, dead, job's deliveries, job's events. ARGV: id, attempts
# counted at claim, error, next due time or 'dead'.
_FAILED = (
    _JOB_STATE
    + """
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
if redis.call('HGET', KEYS[2], 'status') == 'delivered' then return 0 end
if redis.call('HGET', KEYS[2], 'attempts') ~= ARGV[2] then return 0 end
local attempts = redis.call('HINCRBY', KEYS[2], 'attempts', 1)
redis.call('HSET', KEYS[2], 'last_error', ARGV[3])
redis.call('HINCRBY', KEYS[4], 'attempt_failed', 1)
if ARGV[4] == 'dead' then
  local t = redis.call('TIME')
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('ZADD', KEYS[5], t[1], ARGV[1])
  redis.call('HSET', KEYS[2], 'status', 'dead', 'dead_at', t[1])
  redis.call('PERSIST', KEYS[2])
  redis.call('PERSIST', KEYS[6])
  -- A dead-lettered job keeps its record (and events) until it is replayed and delivered, or
  -- deleted: what the receiver never heard of stays readable.
  redis.call('PERSIST', KEYS[3])
  redis.call('PERSIST', KEYS[7])
  redis.call('HINCRBY', KEYS[4], 'dead_lettered', 1)
  job_state(KEYS[3], ARGV[1], 'failed', attempts)
  return -attempts
end
redis.call('ZADD', KEYS[1], 'XX', ARGV[4], ARGV[1])
job_state(KEYS[3], ARGV[1], 'pending', attempts)
return attempts
"""
)

# KEYS: dead, due, record, job, job's deliveries. ARGV: id, record TTL.
_REPLAY = (
    _JOB_STATE
    + _NO_OTHER_DEAD
    + """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
if redis.call('EXISTS', KEYS[3]) == 0 then return -1 end
local t = redis.call('TIME')
local now = string.format('%d.%06d', t[1], t[2])
redis.call('HSET', KEYS[3], 'attempts', 0, 'since', now, 'status', 'pending', 'dead_at', '')
redis.call('EXPIRE', KEYS[3], ARGV[2])
if no_other_dead(KEYS[5], KEYS[1], ARGV[1]) then redis.call('EXPIRE', KEYS[5], ARGV[2]) end
redis.call('ZADD', KEYS[2], now, ARGV[1])
job_state(KEYS[4], ARGV[1], 'pending', 0)
return 1
"""
)


def retry_delay(attempts: int, settings: Settings, *, jitter: float | None = None) -> float:
    """Seconds from the `attempts`-th failed attempt to the next: CALLBACK_RETRY_BASE_SECONDS
    × 4^(attempts-1), ±20 % so the deliveries of many jobs that failed together (the receiver
    was down) do not all come back in the same second, at most CALLBACK_RETRY_MAX_SECONDS.
    With the defaults: 5 s, 20 s, 80 s, 5 min, 21 min, then hourly until a day has passed.
    `jitter` (0.8–1.2) is drawn when not given."""
    factor = random.uniform(0.8, 1.2) if jitter is None else jitter
    exponent = min(max(attempts - 1, 0), 64)  # 4^64 s is past any cap; no float overflow
    return min(
        settings.callback_retry_base_seconds * 4.0**exponent * factor,
        settings.callback_retry_max_seconds,
    )


def next_due(attempts: int, now: float, since: float, settings: Settings) -> float | None:
    """When the next attempt is due after the `attempts`-th failed one at `now`, or None when
    the delivery is given up (CALLBACK_GIVE_UP_SECONDS after `since`: the job's end, or the
    replay). The last attempt is made at the give-up time itself, never skipped."""
    give_up_at = since + settings.callback_give_up_seconds
    if now >= give_up_at:
        return None
    return min(now + retry_delay(attempts, settings), give_up_at)


@dataclass(frozen=True)
class Delivery:
    """One delivery's record as a claim reads it."""

    id: str
    job_id: str
    url: str
    operator_set: bool
    attempts: int
    since: float
    snapshot_fields: dict[str, str]

    @classmethod
    def from_fields(cls, delivery_id: str, fields: Mapping[str, str]) -> Delivery:
        return cls(
            id=delivery_id,
            job_id=fields["job_id"],
            url=fields["url"],
            operator_set=fields.get("operator") == "1",
            attempts=int(fields.get("attempts") or 0),
            since=float(fields.get("since") or fields.get("ended") or 0),
            snapshot_fields=json.loads(fields["snapshot"]),
        )

    def body(self) -> bytes:
        """The job end's snapshot as the result endpoint renders it (the JobSnapshot model's
        JSON), from the fields the end's event carried."""
        return JobSnapshot.from_fields(self.snapshot_fields).model_dump_json().encode()


@dataclass(frozen=True)
class Claim:
    """Deliveries taken by one claim, and Redis' clock when it took them."""

    now: float
    deliveries: list[Delivery]


class DeliveryStore:
    """The delivery records of the callbacks (blocking: the worker's drain, the replay CLI)."""

    def __init__(
        self, client: redis.Redis, settings: Settings, *, lease_seconds: float | None = None
    ) -> None:
        self._client = client
        self._settings = settings
        self._lease = lease_seconds
        self._claim = client.register_script(_CLAIM)
        self._delivered = client.register_script(_DELIVERED)
        self._failed = client.register_script(_FAILED)
        self._replay = client.register_script(_REPLAY)

    @property
    def attempt_seconds(self) -> float:
        """An attempt's whole time, from its claim: CALLBACK_TIMEOUT_SECONDS for DNS, connect,
        TLS, request and response together (the sender enforces it)."""
        return float(self._settings.callback_timeout_seconds)

    @property
    def lease_seconds(self) -> float:
        """How long a claimed delivery stays invisible to other drains: an attempt's whole time
        plus a margin (LEASE_MARGIN_SECONDS: recording the outcome, a loaded host), so no other
        drain sends it while the attempt may still be under way. A drain killed mid-attempt
        delays that delivery by this much (tests pass a shorter `lease_seconds`)."""
        if self._lease is not None:
            return self._lease
        return self.attempt_seconds + LEASE_MARGIN_SECONDS

    def claim(self, limit: int) -> Claim:
        """Up to `limit` due deliveries, leased to the caller. A due id whose record is gone
        (the job was deleted) is dropped here."""
        now_raw, ids = self._claim(keys=[keys.CALLBACKS_DUE], args=[self.lease_seconds, limit])
        ids = [_text(i) for i in ids]
        with self._client.pipeline(transaction=False) as pipe:
            for delivery_id in ids:
                pipe.hgetall(keys.callback(delivery_id))
            records = pipe.execute() if ids else []
        deliveries = []
        for delivery_id, record in zip(ids, records, strict=True):
            fields = decode_mapping(record)
            if not fields.get("snapshot"):
                self._client.zrem(keys.CALLBACKS_DUE, delivery_id)
                continue
            deliveries.append(Delivery.from_fields(delivery_id, fields))
        return Claim(now=float(_text(now_raw)), deliveries=deliveries)

    def delivered(self, delivery: Delivery) -> int:
        """Record a 2xx, even one that comes after the lease ran out and another drain took
        the delivery over: the receiver has it. Returns the attempts made (0 when it was
        delivered already or is gone)."""
        return int(
            self._delivered(
                keys=[
                    keys.CALLBACKS_DUE,
                    keys.callback(delivery.id),
                    keys.job(delivery.job_id),
                    keys.METRICS_CALLBACKS,
                    keys.job_events(delivery.job_id),
                    keys.CALLBACKS_DEAD,
                    keys.job_callbacks(delivery.job_id),
                ],
                args=[
                    delivery.id,
                    delivery.attempts,
                    self._settings.job_ttl_seconds,
                    callback_record_ttl(self._settings),
                    DELIVERED_GRACE_SECONDS,
                ],
            )
        )

    def failed(self, delivery: Delivery, error: str, *, now: float) -> float | None:
        """Record a failed attempt made at `now` (Redis' clock); returns when the next is due,
        or None when this was the last one (dead-lettered)."""
        attempts = delivery.attempts + 1
        due = next_due(attempts, now, delivery.since, self._settings)
        self._failed(
            keys=[
                keys.CALLBACKS_DUE,
                keys.callback(delivery.id),
                keys.job(delivery.job_id),
                keys.METRICS_CALLBACKS,
                keys.CALLBACKS_DEAD,
                keys.job_callbacks(delivery.job_id),
                keys.job_events(delivery.job_id),
            ],
            args=[delivery.id, delivery.attempts, error[:500], DEAD if due is None else repr(due)],
        )
        return due

    def dead_letters(self) -> list[str]:
        return [_text(i) for i in self._client.zrange(keys.CALLBACKS_DEAD, 0, -1)]

    def replay(self, delivery_ids: Iterable[str]) -> list[str]:
        """Move these dead letters back to due, attempts reset and a new give-up window from
        now; returns the ids that were dead letters with a record (the others are skipped)."""
        replayed = []
        ttl = callback_record_ttl(self._settings)
        for delivery_id in delivery_ids:
            job_id = _text(self._client.hget(keys.callback(delivery_id), "job_id") or "")
            done = self._replay(
                keys=[
                    keys.CALLBACKS_DEAD,
                    keys.CALLBACKS_DUE,
                    keys.callback(delivery_id),
                    keys.job(job_id),
                    keys.job_callbacks(job_id),
                ],
                args=[delivery_id, ttl],
            )
            if int(done) == 1:
                replayed.append(delivery_id)
        return replayed

    def record(self, delivery_id: str) -> dict[str, str]:
        raw: dict[Any, Any] = self._client.hgetall(keys.callback(delivery_id))
        return decode_mapping(raw)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
