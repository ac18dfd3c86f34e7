"""A real worker's heartbeat in its broker's Redis: entered for exactly the queues it consumes,
and removed when it shuts down cleanly (not only when its TTL runs out)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import redis

from devtools import stack
from tests.conftest import OwnBrokerApi
from tests.helpers.wait import wait_until
from yousync.core import keys
from yousync.core.broker import AUDIO_QUEUE, MAINTENANCE_QUEUE

# Beats a minute apart (TTL three minutes): within this test, only a clean exit removes it.
SLOW_BEATS = "60"


def test_heartbeat_when_worker_consumes_one_queue_then_entered_there_only_and_left_on_shutdown(
    api_on_own_broker: OwnBrokerApi, workdir: Path
) -> None:
    broker = redis.Redis.from_url(api_on_own_broker.broker_url, decode_responses=True)
    env = {**api_on_own_broker.env, "WORKER_HEARTBEAT_SECONDS": SLOW_BEATS}
    started = time.time()
    worker = stack.worker_proc(env, workdir, name="beats", queues=MAINTENANCE_QUEUE).start()
    hostname = f"beats@{socket.gethostname()}"
    try:
        expires = wait_until(
            lambda: broker.zscore(keys.queue_workers(MAINTENANCE_QUEUE), hostname),
            timeout=10,
            what="the worker never wrote its heartbeat",
        )
        assert started + 180 <= expires <= time.time() + 180  # three missed beats
        assert broker.zcard(keys.queue_workers(AUDIO_QUEUE)) == 0
    finally:
        worker.stop()

    assert broker.zscore(keys.queue_workers(MAINTENANCE_QUEUE), hostname) is None
    broker.close()
