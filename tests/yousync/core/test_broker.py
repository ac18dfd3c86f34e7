"""The shared Celery app's contract with the broker's Redis: every task message carries its
publish time, and its queue's lists are where kombu really puts messages (real Redis)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from devtools import stack
from tests.conftest import OwnBrokerApi
from tests.helpers.api import upload_accepted
from tests.helpers.audio import wav_bytes
from tests.helpers.wait import wait_until
from yousync.core.broker import AUDIO_QUEUE, MAINTENANCE_QUEUE, redis_queue_keys
from yousync.core.models import PUBLISHED_AT_HEADER

# A db of the session's Redis no worker consumes from (the session's broker is db 1).
SPARE_DB = 5


@pytest.fixture
def spare_broker(redis_url: str) -> Iterator[tuple[Celery, redis.Redis]]:
    url = redis_url.rsplit("/", 1)[0] + f"/{SPARE_DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    app = Celery("publisher", broker=url)
    app.conf.update(task_serializer="json", accept_content=["json"])
    yield app, client
    app.close()
    client.flushdb()
    client.close()


def oldest_headers(client: redis.Redis, key: str) -> dict[str, object]:
    raw = client.lindex(key, -1)
    assert raw is not None, f"nothing waits in {key!r}"
    return dict(json.loads(raw)["headers"])


def test_redis_queue_keys_when_tasks_published_at_every_priority_then_they_wait_in_those_lists(
    spare_broker: tuple[Celery, redis.Redis],
) -> None:
    app, client = spare_broker
    for priority in range(10):
        app.send_task("tasks.x", queue=AUDIO_QUEUE, priority=priority)

    lists = redis_queue_keys(AUDIO_QUEUE)

    assert sum(int(client.llen(key)) for key in lists) == 10
    written = {key.decode() for key in client.keys(f"{AUDIO_QUEUE}*")}
    assert written <= set(lists) and len(written) > 1  # priorities spread over several lists


def test_published_at_when_any_app_in_the_process_publishes_then_the_message_carries_it(
    spare_broker: tuple[Celery, redis.Redis],
) -> None:
    """The signal is process-wide: a bare app is stamped too once yousync.core.broker is loaded
    (imported above), and the time is taken at publish."""
    app, client = spare_broker
    before = time.time()
    app.send_task("tasks.x", queue=AUDIO_QUEUE)
    after = time.time()
    stamped = oldest_headers(client, AUDIO_QUEUE)[PUBLISHED_AT_HEADER]
    assert isinstance(stamped, float) and before <= stamped <= after


def test_published_at_when_api_uploads_and_beat_sends_a_sweep_then_both_carry_it(
    api_on_own_broker: OwnBrokerApi, workdir: Path, token_id: str
) -> None:
    broker = redis.Redis.from_url(api_on_own_broker.broker_url)
    before = time.time()
    upload_accepted(api_on_own_broker.api_url, token_id, wav_bytes(0.5))
    uploaded = time.time()
    beat = stack.beat_proc(
        {**api_on_own_broker.env, "MAINTENANCE_INTERVAL_SECONDS": "0.5"}, workdir
    ).start()
    try:
        wait_until(
            lambda: broker.llen(MAINTENANCE_QUEUE),
            timeout=15,
            what="Beat sent no sweep to the maintenance queue",
        )
    finally:
        beat.stop()
    swept = time.time()

    upload_at = oldest_headers(broker, AUDIO_QUEUE)[PUBLISHED_AT_HEADER]
    sweep_at = oldest_headers(broker, MAINTENANCE_QUEUE)[PUBLISHED_AT_HEADER]
    assert isinstance(upload_at, float) and before <= upload_at <= uploaded
    assert isinstance(sweep_at, float) and uploaded <= sweep_at <= swept
    broker.close()
