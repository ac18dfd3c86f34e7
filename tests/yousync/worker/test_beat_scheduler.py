"""Exactly one Beat sends: the lock's Redis scripts and the scheduler on a real redis-server
(the lock is Redis code, so no fake stands in for it), then two and three real `celery beat`
processes on a Redis of their own, stopped cleanly and SIGKILLed."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from devtools import stack
from tests.helpers.wait import wait_until
from yousync.core import keys
from yousync.worker.beat_scheduler import BeatLock, SingleBeatScheduler, lock_client

QUEUE = "beat-test"


def lock(client: redis.Redis, owner: str, ttl: float = 5.0) -> BeatLock:
    return BeatLock(client, ttl_seconds=ttl, owner=owner)


@pytest.fixture
def raw(redis_url: str, redis_client: redis.Redis) -> Iterator[redis.Redis]:
    """A bytes client on the test's clean job-state db (what BeatLock is given in production)."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


# --- the lock ------------------------------------------------------------------------------------


def test_lock_when_free_then_taken_with_the_ttl_and_a_second_owner_sees_the_holder(
    raw: redis.Redis,
) -> None:
    first, second = lock(raw, "host-a:1:aa"), lock(raw, "host-b:2:bb")

    assert first.refresh() == "host-a:1:aa"
    assert second.refresh() == "host-a:1:aa"

    assert first.held and not second.held
    assert raw.get(keys.BEAT_LOCK) == b"host-a:1:aa"
    assert 0 < raw.pttl(keys.BEAT_LOCK) <= 5000


def test_lock_when_holder_refreshes_then_its_ttl_is_extended_not_reset_by_others(
    raw: redis.Redis,
) -> None:
    holder, other = lock(raw, "host-a:1:aa"), lock(raw, "host-b:2:bb")
    holder.refresh()
    raw.pexpire(keys.BEAT_LOCK, 200)  # as if the last renewal were nearly a TTL ago

    other.refresh()
    assert raw.pttl(keys.BEAT_LOCK) <= 200, "a standby must not extend someone else's lock"
    holder.refresh()
    assert raw.pttl(keys.BEAT_LOCK) > 200


def test_lock_when_the_holders_key_expired_then_a_standby_takes_it(raw: redis.Redis) -> None:
    holder, standby = lock(raw, "host-a:1:aa"), lock(raw, "host-b:2:bb")
    holder.refresh()
    raw.pexpire(keys.BEAT_LOCK, 1)  # the holder died a TTL ago
    wait_until(lambda: not raw.exists(keys.BEAT_LOCK), timeout=5, what="the key expired")

    assert standby.refresh() == "host-b:2:bb"
    assert holder.refresh() == "host-b:2:bb"
    assert standby.held and not holder.held


def test_release_when_the_lock_is_ours_then_deleted_and_never_deletes_anothers(
    raw: redis.Redis,
) -> None:
    holder, other = lock(raw, "host-a:1:aa"), lock(raw, "host-b:2:bb")
    holder.refresh()

    assert other.release() is False
    assert raw.get(keys.BEAT_LOCK) == b"host-a:1:aa"
    assert holder.release() is True
    assert raw.get(keys.BEAT_LOCK) is None and not holder.held

    # Our lock expired and another Beat took it: releasing ours must leave theirs alone.
    raw.set(keys.BEAT_LOCK, "host-b:2:bb")
    assert holder.release() is False
    assert raw.get(keys.BEAT_LOCK) == b"host-b:2:bb"


def test_lock_when_redis_goes_down_then_held_only_until_the_lease_would_have_expired(
    workdir: Path,
) -> None:
    own_redis = stack.redis_proc(workdir).start()
    client = lock_client(f"redis://127.0.0.1:{own_redis.name.split(':')[1]}/0", 0.5)
    try:
        holder = lock(client, "host-a:1:aa", ttl=1.5)
        holder.refresh()
        own_redis.kill()

        with pytest.raises(redis.RedisError):
            holder.refresh()
        assert holder.held, "within its lease the holder may still act"
        wait_until(lambda: not holder.held, timeout=3, what="the lease running out")
        assert holder.lease_left == 0
    finally:
        own_redis.kill()
        client.close()


# --- the scheduler, in this process ---------------------------------------------------------------


BROKER_DB = 5  # a spare db of the test Redis: the session's worker never reads it


@pytest.fixture
def beat_app(redis_service: stack.Proc) -> Iterator[Celery]:
    """A Celery app whose Beat schedule sends one task every 50 ms to a queue of its own on a
    spare db of the test Redis, where the test counts what was sent."""
    port = redis_service.name.split(":")[1]
    app = Celery("beat-test", broker=f"redis://127.0.0.1:{port}/{BROKER_DB}")
    app.conf.beat_schedule = {"sweep": {"task": "tasks.maintenance.sweep_spool", "schedule": 0.05}}
    app.conf.task_default_queue = QUEUE
    with redis.Redis(port=int(port), db=BROKER_DB) as broker:
        broker.delete(QUEUE)
    yield app
    with redis.Redis(port=int(port), db=BROKER_DB) as broker:
        broker.delete(QUEUE)
    app.close()


def sent(app: Celery) -> int:
    """Messages the app's Beat published to the test queue (nobody consumes it)."""
    with redis.Redis.from_url(app.conf.broker_url) as broker:
        return int(broker.llen(QUEUE))


def scheduler(app: Celery, beat_lock: BeatLock, path: Path) -> SingleBeatScheduler:
    return SingleBeatScheduler(app=app, schedule_filename=str(path), lock=beat_lock)


def run_for(beat: SingleBeatScheduler, seconds: float) -> None:
    """Beat's own loop (celery.beat.Service.start) for a while: tick, sleep what it asks."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(max(0.0, min(beat.tick(), left)))  # a late entry asks for < 0: no sleep


def test_scheduler_when_two_run_then_only_the_lock_holder_sends_and_the_other_stands_by(
    beat_app: Celery,
    raw: redis.Redis,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="yousync.beat")
    first = scheduler(beat_app, lock(raw, "host-a:1:aa", ttl=3.0), tmp_path / "a")
    second = scheduler(beat_app, lock(raw, "host-b:2:bb", ttl=3.0), tmp_path / "b")
    try:
        run_for(first, 0.3)
        by_first = sent(beat_app)
        standby_sleeps = [second.tick() for _ in range(3)]
        run_for(second, 0.3)
        by_second = sent(beat_app) - by_first
    finally:
        first.close()
        second.close()

    assert by_first >= 2
    assert by_second == 0
    assert standby_sleeps == [1.0, 1.0, 1.0], "a standby retries once per renewal period"
    assert first.max_interval == second.max_interval == 1.0, "ticks renew well inside the TTL"
    messages = [r.getMessage() for r in caplog.records]
    assert "beat: holding the lock (owner host-a:1:aa, ttl 3 s)" in messages
    assert messages.count("beat: standby, lock held by host-a:1:aa") == 1, "logged once"


def test_scheduler_when_the_holder_closes_then_the_lock_is_released_and_the_standby_sends(
    beat_app: Celery, raw: redis.Redis, tmp_path: Path
) -> None:
    first = scheduler(beat_app, lock(raw, "host-a:1:aa", ttl=30.0), tmp_path / "a")
    second = scheduler(beat_app, lock(raw, "host-b:2:bb", ttl=30.0), tmp_path / "b")
    try:
        run_for(first, 0.1)
        second.tick()
        first.close()
        first.close()  # Celery closes twice on SIGTERM (its signal handler, then its loop)
        assert raw.get(keys.BEAT_LOCK) is None, "released, not left to expire in 30 s"
        before = sent(beat_app)
        run_for(second, 0.3)
    finally:
        second.close()

    assert sent(beat_app) > before


def test_scheduler_when_redis_is_unreachable_then_it_stops_sending_once_its_lease_ran_out(
    beat_app: Celery, workdir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="yousync.beat")
    own_redis = stack.redis_proc(workdir).start()  # the lock's Redis; the broker stays up
    client = lock_client(f"redis://127.0.0.1:{own_redis.name.split(':')[1]}/0", 0.5)
    beat = scheduler(beat_app, lock(client, "host-a:1:aa", ttl=1.5), tmp_path / "a")
    try:
        assert beat.may_send()
        own_redis.kill()
        assert beat.may_send(), "within its lease it goes on"
        wait_until(lambda: not beat.may_send(), timeout=3, what="the holder going quiet")
        before = sent(beat_app)
        run_for(beat, 0.3)
        after = sent(beat_app)
    finally:
        own_redis.kill()
        beat.close()
        client.close()

    assert after == before, "a Beat unsure of its lock sends nothing"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings[0].startswith("beat: cannot reach Redis to renew the lock; sending for")
    assert "beat: cannot reach Redis and hold no lease: sending nothing until it answers" in (
        warnings
    )


# --- real Beat processes -------------------------------------------------------------------------

TTL = 3.0  # BEAT_LOCK_TTL_SECONDS of the Beats below: renewed (and retried) every second


def log_of(beat: stack.Proc) -> str:
    return beat.log_path.read_text(errors="replace")


def sends(beat: stack.Proc) -> int:
    return log_of(beat).count("Sending due task")


def test_two_beats_when_running_then_one_sends_and_the_other_takes_over_on_stop_or_kill(
    stack_env: dict[str, str], workdir: Path, tmp_path: Path
) -> None:
    own_redis = stack.redis_proc(workdir).start()
    url = f"redis://127.0.0.1:{own_redis.name.split(':')[1]}/0"
    env = {
        **stack_env,
        "REDIS_URL": url,
        "MAINTENANCE_INTERVAL_SECONDS": "1",
        "BEAT_LOCK_TTL_SECONDS": str(TTL),
    }
    client = redis.Redis.from_url(url, decode_responses=True)
    beats = {name: stack.beat_proc(env, tmp_path, name=name) for name in ("a", "b", "c")}
    a, b, c = beats.values()
    try:
        a.start()
        wait_until(lambda: "beat: holding the lock" in log_of(a), timeout=15, what="a holds")
        b.start()
        wait_until(lambda: "beat: standby, lock held by" in log_of(b), timeout=15, what="b waits")
        wait_until(lambda: sends(a) >= 6, timeout=15, what="a sending two rounds")
        assert sends(b) == 0, "the standby sent while the holder was alive"

        # SIGTERM (a clean stop): the holder releases the lock, the standby takes over.
        holder = client.get(keys.BEAT_LOCK)
        a.stop()
        assert a.popen is not None and a.popen.returncode == 0, a.log_tail()
        assert "beat: released the lock" in log_of(a)
        assert client.get(keys.BEAT_LOCK) != holder, "the lock was left to expire"
        wait_until(lambda: sends(b) >= 3, timeout=10, what="b sending after a stopped")
        assert "beat: holding the lock" in log_of(b)

        # SIGKILL: nothing is released; the next standby takes over once the TTL ran out.
        c.start()
        wait_until(lambda: "beat: standby, lock held by" in log_of(c), timeout=15, what="c waits")
        assert sends(c) == 0
        holder = client.get(keys.BEAT_LOCK)
        b.kill()
        assert client.get(keys.BEAT_LOCK) == holder, "a killed Beat leaves its lock behind"
        wait_until(lambda: sends(c) >= 3, timeout=TTL + 10, what="c sending after b died")
    finally:
        for beat in beats.values():
            beat.kill()
        own_redis.kill()
        client.close()

    assert "beat: holding the lock" in log_of(c)
    assert all("Traceback" not in log_of(beat) for beat in beats.values())
