"""Prometheus metrics, served by the API at `GET /metrics`.

Two sources, one page:

* **The API processes** (prometheus-client objects): uploads by outcome, bytes received, HTTP
  requests, SSE clients connected, events delivered, replays served, the event hub's
  notifications, reconnects, subscription and resyncs, and the processes' memory and
  descriptors. With `PROMETHEUS_MULTIPROC_DIR` set (production: `uvicorn --workers N`) they are
  the sum over every API process of the host, whichever process answers the scrape
  (yousync/observability/multiprocess.py); unset, this one process's own, plus the client's
  usual `process_*` series. Prometheus sums them across hosts.
* **The whole cluster, kept in Redis**: jobs by final status (counted by the job-state Lua
  script, the one place every terminal transition passes, whoever makes it: worker, cancel, Beat)
  and time per pipeline stage (recorded by each worker process as the stage ends), and the
  completion callbacks: deliveries pending and dead-lettered (the sizes of their sorted sets)
  and attempt outcomes (counted by the delivery scripts, yousync/core/callbacks.py). The API
  reads them with one round trip per scrape and renders them as counters, gauges and
  histograms.

Why Redis rather than prometheus-client's multiprocess mode for the cluster: workers run on other
hosts than the API (multiprocess mode needs one shared directory on one host), prefork children
come and go, and Redis is already the one place every process reaches. The cost is a few
`HINCRBY`s per stage per job. Every API instance reports the same cluster numbers: aggregate them
with `max`, not `sum` (the Grafana dashboard in deploy/ does).

A third source, **the broker's queues** (length, oldest message's age, live workers), is read
from the broker's Redis by yousync/observability/broker_queues.py, in the same scrape.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from yousync.core import keys
from yousync.core.models import TERMINAL_STATUSES
from yousync.core.stages import TIMED_STAGES
from yousync.observability import broker_queues, multiprocess

if TYPE_CHECKING:
    import redis
    import redis.asyncio as aioredis

log = logging.getLogger(__name__)


# Stage durations run from milliseconds (storing) to the hard time limit (a long analysis).
STAGE_BUCKETS: tuple[float, ...] = (
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    900.0,
)
STAGES = tuple(stage.value for stage in TIMED_STAGES)
FINAL_STATUSES = tuple(sorted(status.value for status in TERMINAL_STATUSES))
# Fields of keys.METRICS_CALLBACKS, each a value of `yousync_callback_attempts{outcome}`.
CALLBACK_OUTCOMES = ("delivered", "attempt_failed", "dead_lettered")

# --- the API processes ----------------------------------------------------------------------
# Gauges say how prometheus-client merges them over a host's processes in multiprocess mode
# (ignored otherwise): `livesum` adds up the processes alive, and a process that ends stops
# counting (multiprocess.py). Every update here is an increment or a set of a float: in
# multiprocess mode a write into an mmap'd file, ≈ 0.8 µs instead of 0.3 µs, which matters only
# for `sse_event_delivered` (once per event per client, ≈ 80 µs each).

UPLOADS = Counter(
    "yousync_uploads",
    "Upload requests by outcome: `accepted`, or the error code of the rejection.",
    ["outcome"],
)
UPLOAD_BYTES = Counter(
    "yousync_upload_received_bytes", "Bytes of accepted uploads received and spooled."
)
HTTP_REQUESTS = Counter(
    "yousync_http_requests",
    "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "yousync_http_request_duration_seconds",
    "Time to answer an HTTP request (for SSE: the whole stream), by route template.",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0),
)
SSE_EVENTS = Counter("yousync_sse_events_delivered", "SSE events handed to connected clients.")
SSE_REPLAYS = Counter(
    "yousync_sse_replays", "SSE streams resumed from a Last-Event-ID (a reconnect replay)."
)
SSE_REPLAYED_EVENTS = Counter(
    "yousync_sse_replayed_events", "Events re-read from a job's Stream for resumed streams."
)
HUB_RESYNCS = Counter(
    "yousync_hub_resyncs",
    "Clients told to re-read the Stream: `overflow` (a slow client's queue was full) or "
    "`resubscribe` (the hub's Redis subscription was re-established, one per client).",
    ["reason"],
)
SSE_CLIENTS = Gauge(
    "yousync_sse_clients",
    "SSE clients connected (job and token streams), summed over this host's API processes.",
    multiprocess_mode="livesum",
)
HUB_NOTIFICATIONS = Counter(
    "yousync_hub_notifications",
    "Job notifications received by the API processes' pub/sub subscriptions (one per process).",
)
HUB_RECONNECTS = Counter(
    "yousync_hub_reconnects", "Times an event hub lost its Redis subscription and reconnected."
)
HUB_CONNECTED = Gauge(
    "yousync_hub_connected",
    "API processes whose event hub's Redis subscription is up (1 per process).",
    multiprocess_mode="livesum",
)
API_PROCESSES = Gauge(
    "yousync_api_processes",
    "API processes serving on this host (1 per process): compare with yousync_hub_connected.",
    multiprocess_mode="livesum",
)
for _outcome in ("accepted",):
    UPLOADS.labels(outcome=_outcome)
for _reason in ("overflow", "resubscribe"):
    HUB_RESYNCS.labels(reason=_reason)


def upload_accepted(size_bytes: int) -> None:
    UPLOADS.labels(outcome="accepted").inc()
    UPLOAD_BYTES.inc(size_bytes)


def upload_rejected(code: str) -> None:
    UPLOADS.labels(outcome=code).inc()


def http_request(method: str, route: str, status: int, seconds: float) -> None:
    HTTP_REQUESTS.labels(method=method, route=route, status=str(status)).inc()
    HTTP_DURATION.labels(route=route).observe(seconds)


def sse_event_delivered() -> None:
    SSE_EVENTS.inc()


def sse_replay(events: int) -> None:
    SSE_REPLAYS.inc()
    SSE_REPLAYED_EVENTS.inc(events)


def hub_resync(reason: str, clients: int = 1) -> None:
    if clients:
        HUB_RESYNCS.labels(reason=reason).inc(clients)


def sse_client_joined() -> None:
    SSE_CLIENTS.inc()


def sse_client_left() -> None:
    SSE_CLIENTS.dec()


def hub_notification() -> None:
    HUB_NOTIFICATIONS.inc()


def hub_reconnect() -> None:
    HUB_RECONNECTS.inc()


def hub_connected(up: bool) -> None:
    HUB_CONNECTED.set(1 if up else 0)


@contextlib.contextmanager
def serving(multiproc_dir: Path | None) -> Iterator[None]:
    """The lifetime of one API process (its lifespan): counted in `yousync_api_processes`
    while it serves; live gauges start at 0, even when an earlier process with the same pid
    left its files behind; a clean exit takes its live gauges out of the host's sums."""
    multiprocess.check(multiproc_dir)
    SSE_CLIENTS.set(0)
    HUB_CONNECTED.set(0)
    API_PROCESSES.set(1)
    try:
        yield
    finally:
        API_PROCESSES.set(0)
        HUB_CONNECTED.set(0)
        if multiproc_dir is not None:
            multiprocess.leave(multiproc_dir)


# --- the cluster, kept in Redis -------------------------------------------------------------


def _bound(value: float) -> str:
    return "+Inf" if math.isinf(value) else repr(float(value))


def record_stage(client: redis.Redis, stage: str, seconds: float) -> None:
    """Worker side: add one finished stage to the cluster histogram (one round trip).

    Each observation increments only the bucket it falls in (`{stage}|in|{bound}`), plus
    `{stage}|count` and `{stage}|sum`: three commands instead of one per cumulative bucket,
    which is most of the Redis work a job's stages cost the worker. The scrape cumulates.
    """
    seconds = max(seconds, 0.0)
    bound = next(b for b in (*STAGE_BUCKETS, math.inf) if seconds <= b)
    pipe = client.pipeline(transaction=False)
    pipe.hincrby(keys.METRICS_STAGE_SECONDS, f"{stage}|in|{_bound(bound)}", 1)
    pipe.hincrby(keys.METRICS_STAGE_SECONDS, f"{stage}|count", 1)
    pipe.hincrbyfloat(keys.METRICS_STAGE_SECONDS, f"{stage}|sum", seconds)
    pipe.execute()


def cumulative_buckets(fields: dict[str, str], stage: str) -> list[tuple[str, float]]:
    """Prometheus' `le` buckets of one stage from the per-bucket counts `record_stage` keeps."""
    running = 0.0
    buckets = []
    for bound in (*STAGE_BUCKETS, math.inf):
        running += float(fields.get(f"{stage}|in|{_bound(bound)}", 0))
        buckets.append((_bound(bound), running))
    return buckets


@dataclass(frozen=True)
class ClusterSnapshot:
    """The two Redis hashes as read at one scrape; `up` is False when Redis did not answer."""

    up: bool
    jobs_finished: dict[str, str]
    stage_seconds: dict[str, str]
    callbacks: dict[str, str] = field(default_factory=dict)
    callbacks_pending: int = 0
    callbacks_dead: int = 0


def _decoded(mapping: dict[Any, Any]) -> dict[str, str]:
    return {
        (k.decode() if isinstance(k, bytes) else str(k)): (
            v.decode() if isinstance(v, bytes) else str(v)
        )
        for k, v in mapping.items()
    }


async def read_cluster(client: aioredis.Redis, *, limit_seconds: float = 2.0) -> ClusterSnapshot:
    try:
        with anyio.fail_after(limit_seconds):
            async with client.pipeline(transaction=False) as pipe:
                pipe.hgetall(keys.METRICS_JOBS_FINISHED)
                pipe.hgetall(keys.METRICS_STAGE_SECONDS)
                pipe.hgetall(keys.METRICS_CALLBACKS)
                pipe.zcard(keys.CALLBACKS_DUE)
                pipe.zcard(keys.CALLBACKS_DEAD)
                finished, stages, callbacks, pending, dead = await pipe.execute()
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning("metrics: cluster metrics unavailable (%s)", exc)
        return ClusterSnapshot(up=False, jobs_finished={}, stage_seconds={})
    return ClusterSnapshot(
        up=True,
        jobs_finished=_decoded(finished),
        stage_seconds=_decoded(stages),
        callbacks=_decoded(callbacks),
        callbacks_pending=int(pending),
        callbacks_dead=int(dead),
    )


class _ClusterCollector(Collector):
    """Renders the snapshot the /metrics handler just read (an async Redis read cannot happen
    inside a synchronous `collect`): one per scrape."""

    def __init__(self, snapshot: ClusterSnapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        snap = self.snapshot
        up = GaugeMetricFamily(
            "yousync_cluster_metrics_up", "1 when the cluster metrics could be read from Redis."
        )
        up.add_metric([], 1 if snap.up else 0)
        yield up
        if not snap.up:
            return
        finished = CounterMetricFamily(
            "yousync_jobs_finished",
            "Jobs that reached a final status, cluster-wide (a retried job counts each time).",
            labels=["status"],
        )
        for status in sorted({*FINAL_STATUSES, *snap.jobs_finished}):
            finished.add_metric([status], float(snap.jobs_finished.get(status, 0)))
        yield finished
        stages = HistogramMetricFamily(
            "yousync_job_stage_seconds",
            "Time per pipeline stage, cluster-wide, recorded by the workers as each stage ends "
            "(`queued`: from upload to a worker starting the task).",
            labels=["stage"],
        )
        seen = {field.split("|", 1)[0] for field in snap.stage_seconds}
        for stage in sorted(seen, key=lambda s: STAGES.index(s) if s in STAGES else len(STAGES)):
            stages.add_metric(
                [stage],
                cumulative_buckets(snap.stage_seconds, stage),
                float(snap.stage_seconds.get(f"{stage}|sum", 0.0)),
            )
        yield stages
        yield from _callback_metrics(snap)


def _callback_metrics(snap: ClusterSnapshot) -> Iterator[Metric]:
    pending = GaugeMetricFamily(
        "yousync_callbacks_pending",
        "Completion callbacks not delivered yet and still being attempted, cluster-wide.",
    )
    pending.add_metric([], float(snap.callbacks_pending))
    yield pending
    dead = GaugeMetricFamily(
        "yousync_callbacks_dead_letters",
        "Completion callbacks given up after their last attempt, kept until replayed "
        "(python -m yousync.worker.callbacks replay).",
    )
    dead.add_metric([], float(snap.callbacks_dead))
    yield dead
    attempts = CounterMetricFamily(
        "yousync_callback_attempts",
        "Completion callback attempts by outcome, cluster-wide: `delivered` (2xx), "
        "`attempt_failed` (retried or given up), `dead_lettered` (the last attempt failed).",
        labels=["outcome"],
    )
    for outcome in CALLBACK_OUTCOMES:
        attempts.add_metric([outcome], float(snap.callbacks.get(outcome, 0)))
    yield attempts


class _Scrape(Collector):
    """One scrape's page: the API processes' metrics, then the cluster's and the broker's."""

    def __init__(self, *sources: Collector | CollectorRegistry) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        for source in self.sources:
            yield from source.collect()


def render(
    snapshot: ClusterSnapshot,
    accept: str | None,
    broker: broker_queues.BrokerSnapshot | None = None,
    multiproc_dir: Path | None = None,
) -> tuple[bytes, str]:
    """The exposition body and its content type, negotiated from the scraper's Accept header
    (Prometheus text 0.0.4 by default, OpenMetrics when asked). `broker` is None when the
    broker is not Redis (no queue series then).

    With `multiproc_dir`, the API's series are the merged files of every process of the host,
    and never also this process's in-memory registry (which would count it twice); its
    `process_*` series, which describe only whichever process answered, are left out.

    Synchronous file and /proc reads: the route runs it in a worker thread. Everything it
    renders is its own (a collector per scrape), so concurrent scrapes cannot mix."""
    encoder, content_type = choose_encoder(accept or "")
    processes: Collector | CollectorRegistry
    if multiproc_dir is not None:
        processes = multiprocess.HostCollector(multiproc_dir)
    else:
        processes = _Scrape(REGISTRY, multiprocess.SingleProcessCollector())
    page = _Scrape(processes, _ClusterCollector(snapshot), broker_queues.BrokerCollector(broker))
    return encoder(page), content_type


@dataclass
class ApiMetrics:
    """What the lifespan hands to the /metrics route: the Redis client for cluster numbers,
    the broker's reader (None when the broker is not Redis) and the multiprocess directory
    (None with one process)."""

    redis: aioredis.Redis
    broker: broker_queues.BrokerReader | None = None
    multiproc_dir: Path | None = None

    async def read(self) -> tuple[ClusterSnapshot, broker_queues.BrokerSnapshot | None]:
        """Both reads at once: they go to different clients, maybe different servers."""
        if self.broker is None:
            return await read_cluster(self.redis), None
        cluster, broker = await asyncio.gather(read_cluster(self.redis), self.broker.read())
        return cluster, broker

    async def page(self, accept: str | None) -> tuple[bytes, str]:
        """Read Redis and the broker, then render in a worker thread."""
        cluster, broker = await self.read()
        return await anyio.to_thread.run_sync(render, cluster, accept, broker, self.multiproc_dir)
