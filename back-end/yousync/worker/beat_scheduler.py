"""Exactly one Beat sends: `celery -A celery_app beat
--scheduler=yousync.worker.beat_scheduler:SingleBeatScheduler`.

Any number of Beats may run (one per host, for failover); each holds or waits for one lock in the
job-state Redis (`REDIS_URL`, key `keys.BEAT_LOCK`). The holder sends the schedule and renews
the lock on every tick; the others send nothing and try to take it on every tick (hot standby).
The lock's value is its holder's token (`host:pid:uuid`), so only the holder can renew or release
it: both are compare-then-act Lua scripts, atomic in Redis.

- Ticks are at most a third of the lock's TTL apart (`BEAT_LOCK_TTL_SECONDS` / 3), so a holder
  renews in time even if one renewal fails, and a standby tries as often.
- A clean shutdown (SIGTERM, Ctrl-C) releases the lock: a standby takes over at its next tick.
  A holder that dies without releasing (SIGKILL, host gone) loses it when the TTL runs out.
- A holder that cannot reach Redis cannot know whether it still holds the lock: it goes on
  sending only until its lease would have expired — counted from the moment it *sent* its last
  successful renewal, so always before Redis drops the key — then sends nothing until Redis
  answers again. Another Beat can take the lock only after Redis dropped the key, so two Beats
  never send in the same period, except for one publish already under way around a takeover
  (the maintenance sweeps are idempotent, so that is harmless).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis
from celery.beat import PersistentScheduler
from redis.backoff import NoBackoff
from redis.retry import Retry

from yousync.core import keys
from yousync.core.config import get_settings

log = logging.getLogger("yousync.beat")

# Ticks (renewals, and a standby's tries) per lock TTL: one slow or failed renewal does not yet
# lose the lock.
RENEWALS_PER_TTL = 3

# Take the lock when it is free, or extend it when it is ours; either way answer its holder.
_ACQUIRE_OR_EXTEND = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return holder
end
if not holder then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return ARGV[1]
end
return holder
"""

# Delete the lock only while it is ours (a lock that expired may belong to another Beat now).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


def owner_token() -> str:
    """Names the Beat in the logs of the others (host and pid) and stays unique across restarts
    and containers that reuse pids (the uuid)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


class BeatLock:
    """A Redis lock with a TTL that its holder renews, and a local lease: how long the holder
    may still act on it without hearing from Redis."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        ttl_seconds: float,
        key: str = keys.BEAT_LOCK,
        owner: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.key = key
        self.ttl_seconds = ttl_seconds
        self.owner = owner or owner_token()
        self._clock = clock
        self._lease_until = 0.0
        self._acquire_or_extend = client.register_script(_ACQUIRE_OR_EXTEND)
        self._release = client.register_script(_RELEASE)

    def refresh(self) -> str:
        """Take the lock if it is free, renew it if it is ours; returns its holder (our own
        `owner` when we hold it). Raises redis.RedisError when Redis does not answer; the
        lease then runs on from the last renewal."""
        sent_at = self._clock()
        holder = self._acquire_or_extend(
            keys=[self.key], args=[self.owner, max(1, round(self.ttl_seconds * 1000))]
        )
        holder = holder.decode() if isinstance(holder, bytes) else str(holder)
        self._lease_until = sent_at + self.ttl_seconds if holder == self.owner else 0.0
        return holder

    @property
    def held(self) -> bool:
        """We hold it for sure: renewed less than a TTL ago, counted from before the renewal
        was sent (Redis started its own TTL later, so ours always ends first)."""
        return self._clock() < self._lease_until

    @property
    def lease_left(self) -> float:
        return max(0.0, self._lease_until - self._clock())

    def release(self) -> bool:
        """Delete the lock if it is still ours; True when it was. Our lease ends either way."""
        self._lease_until = 0.0
        return bool(self._release(keys=[self.key], args=[self.owner]))


def lock_client(url: str, renew_seconds: float) -> redis.Redis:
    """A client for the lock: socket timeouts well inside one renewal period and no retries
    (redis-py's default backs off for seconds), so a Redis that is down or hangs costs one
    tick, and the next tick tries again."""
    timeout = max(0.2, min(2.0, renew_seconds / 2))
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


def lock_from_settings() -> BeatLock:
    """The lock on the job-state Redis (`REDIS_URL`), with `BEAT_LOCK_TTL_SECONDS`."""
    settings = get_settings()
    ttl = settings.beat_lock_ttl_seconds
    return BeatLock(lock_client(settings.redis_url, ttl / RENEWALS_PER_TTL), ttl_seconds=ttl)


class SingleBeatScheduler(PersistentScheduler):
    """Celery's file-backed scheduler that sends only while it holds the Beat lock."""

    max_interval: float  # Celery's longest sleep between ticks; capped to the renewal period

    def __init__(self, *args: Any, lock: BeatLock | None = None, **kwargs: Any) -> None:
        # `celery beat` also builds a lazy instance only to print its banner: the lock's client
        # connects on first use, so that one never touches Redis.
        self.lock = lock or lock_from_settings()
        self.renew_seconds = self.lock.ttl_seconds / RENEWALS_PER_TTL
        self._state = ""
        super().__init__(*args, **kwargs)
        self.max_interval = min(self.max_interval, self.renew_seconds)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if not self.may_send():
            return self.renew_seconds
        return float(super().tick(*args, **kwargs))

    def may_send(self) -> bool:
        """Renew or take the lock (one Redis round trip) and say whether this Beat may send."""
        try:
            holder = self.lock.refresh()
        except redis.RedisError as exc:
            if self.lock.held:
                self._report(
                    "unreachable-holding",
                    logging.WARNING,
                    "beat: cannot reach Redis to renew the lock; sending for at most %.1f s more",
                    self.lock.lease_left,
                    error=exc,
                )
                return True
            self._report(
                "unreachable",
                logging.WARNING,
                "beat: cannot reach Redis and hold no lease: sending nothing until it answers",
                error=exc,
            )
            return False
        if holder == self.lock.owner:
            self._report(
                "holding",
                logging.INFO,
                "beat: holding the lock (owner %s, ttl %g s)",
                holder,
                self.lock.ttl_seconds,
            )
            return True
        self._report(f"standby:{holder}", logging.INFO, "beat: standby, lock held by %s", holder)
        return False

    def _report(
        self, state: str, level: int, message: str, *args: Any, error: Exception | None = None
    ) -> None:
        """Log state changes only: one line when this Beat starts or stops holding, not one
        per tick."""
        if state == self._state:
            return
        self._state = state
        extra = {"key": self.lock.key}
        if error is not None:
            extra["error"] = f"{type(error).__name__}: {error}"
        log.log(level, message, *args, extra=extra)

    def close(self) -> None:
        """Release the lock first (a standby takes over at its next tick), then sync the
        schedule. Celery may call this twice on SIGTERM; the second call has no lock left."""
        if self._state == "holding" or self.lock.held:
            try:
                released = self.lock.release()
            except redis.RedisError as exc:
                log.warning(
                    "beat: could not release the lock; it expires by itself",
                    extra={"key": self.lock.key, "error": f"{type(exc).__name__}: {exc}"},
                )
            else:
                if released:
                    log.info("beat: released the lock", extra={"key": self.lock.key})
            self._state = "released"
        super().close()

    @property
    def info(self) -> str:
        return f"{super().info}\n    . lock -> {self.lock.key} (ttl {self.lock.ttl_seconds:g} s)"
