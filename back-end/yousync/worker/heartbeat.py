"""The worker's heartbeat in the broker's Redis: which queues it consumes, renewed every
`WORKER_HEARTBEAT_SECONDS` and expiring after three missed beats — what `yousync_workers{queue}`
counts, so "no worker consumes audio_queue" can page (yousync/observability/broker_queues.py).

A consumer bootstep on the worker's own timer rather than a thread or Celery's `heartbeat_sent`
signal: it beats from the main process's event loop, so a worker whose loop is wedged stops
beating (a thread would keep a dead worker "alive"); it reads the queues the consumer really
consumes at each beat (`--queues`, and `add_consumer`/`cancel_consumer` at run time); and it
does not depend on event heartbeats, which `--without-heartbeat` turns off. One pipeline per beat
with one-second socket timeouts; a failed beat is logged and the next one tries again.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import bootsteps
from redis.exceptions import RedisError

from yousync.core.config import get_settings
from yousync.observability import broker_queues

log = logging.getLogger("yousync.worker")


class QueueHeartbeat(bootsteps.StartStopStep):
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        settings = get_settings()
        self.interval = settings.worker_heartbeat_seconds
        self.ttl = settings.worker_heartbeat_ttl_seconds
        # Only a Redis broker holds the heartbeats (the API reads them where it reads queues).
        self.enabled = settings.broker_is_redis
        self.broker_url = settings.broker_url
        self.client: redis.Redis | None = None
        self.tref: Any = None
        self.queues: tuple[str, ...] = ()

    def start(self, c: Any) -> None:
        self.client = redis.Redis.from_url(
            self.broker_url, socket_connect_timeout=1, socket_timeout=1
        )
        self.beat(c)
        self.tref = c.timer.call_repeatedly(self.interval, self.beat, (c,))

    def beat(self, c: Any) -> None:
        queues = tuple(sorted(queue.name for queue in c.task_consumer.queues))
        if self.client is None:
            return
        try:
            dropped = set(self.queues) - set(queues)
            if dropped:  # cancel_consumer: stop counting this worker there at once
                broker_queues.leave(self.client, c.hostname, dropped)
            broker_queues.heartbeat(self.client, c.hostname, queues, self.ttl)
            self.queues = queues
        except (RedisError, OSError) as exc:
            log.warning("worker heartbeat not written (%s)", exc)

    def stop(self, c: Any) -> None:
        """Stopping consuming (shutdown, or a restart after losing the broker): drop out now
        rather than after the TTL; a restarted consumer beats again at its start."""
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None
        if self.client is None:
            return
        try:
            broker_queues.leave(self.client, c.hostname, self.queues)
        except (RedisError, OSError) as exc:
            log.warning("worker heartbeat not removed (%s)", exc)
        self.client.close()
        self.client = None

    shutdown = stop
