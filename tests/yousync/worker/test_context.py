"""The worker's context: one set of clients per process, built on first use, never shared with
a forked child; the main process's `on_failure` keeps to a short-lived connection."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator

import pytest
import redis
from celery.exceptions import TimeLimitExceeded

from tests.helpers.jobs import create_job
from yousync.core.config import Settings
from yousync.worker import context


@pytest.fixture
def no_context() -> Iterator[None]:
    """Start and end the test with no context in this process."""
    previous = context.install(None)
    yield
    built = context.install(previous)
    if built is not None:
        built.close()


def test_context_get_when_called_twice_then_built_once(no_context: None) -> None:
    first = context.get()
    assert context.get() is first
    assert first.store is not None and first.redis is not None


def test_context_get_when_forked_then_child_builds_its_own_clients(no_context: None) -> None:
    parent = context.get()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        pid = os.fork()
    if pid == 0:  # the child: exit status 0 only if it got fresh clients
        try:
            child = context.get()
            fresh = child is not parent and child.redis is not parent.redis
            fresh = fresh and child.storage is not parent.storage and context.get() is child
            os._exit(0 if fresh else 1)
        finally:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert context.get() is parent  # the parent keeps its own


def test_redis_client_when_made_then_decodes_replies_and_bounds_waits() -> None:
    client = context.redis_client(Settings(redis_url="redis://127.0.0.1:1/0"), socket_timeout=5)
    options = client.connection_pool.connection_kwargs
    assert options["decode_responses"] is True
    assert options["socket_timeout"] == 5 and options["socket_connect_timeout"] == 3
    client.close()


def test_on_failure_when_hard_time_limit_then_job_fails_over_a_short_lived_connection(
    no_context: None,
    redis_url: str,
    redis_client: redis.Redis,
    token_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from yousync.worker.tasks import audio_tasks

    monkeypatch.setattr(audio_tasks, "settings", Settings(redis_url=redis_url))
    job_id = create_job(redis_url, token_id)
    redis_client.hset(f"yousync:job:{job_id}", "deliveries", 1)

    audio_tasks.AudioTask().on_failure(TimeLimitExceeded(900), "task", (job_id,), {}, None)

    job = redis_client.hgetall(f"yousync:job:{job_id}")
    assert job["status"] == "failed" and '"code":"timeout"' in job["error"]
    assert job["deliveries"] == "0"  # a killed child is not a crash of the job's making
    # The main process built no context: children forked later inherit no clients.
    assert context.install(None) is None
