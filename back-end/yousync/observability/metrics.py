"""Prometheus metrics, served by the API at `GET /metrics`.

Two sources, one page:

* **This API process** (prometheus-client objects in the default registry): uploads by outcome,
  bytes received, HTTP requests, SSE clients connected, events delivered, replays served, hub
  resyncs — plus the client's usual `process_*` metrics. Every API process reports its own;
  Prometheus sums them across instances.
* **The whole cluster, kept in Redis**: jobs by final status (counted by the job-state Lua
  script, the one place every terminal transition passes, whoever makes it: worker, cancel, Beat)
  and time per pipeline stage (recorded by each worker process as the stage ends). The API reads
  both hashes with one round trip per scrape and renders them as counters and histograms.

Why Redis rather than prometheus-client's multiprocess mode: workers run on other hosts than the
API (multiprocess mode needs one shared directory on one host), prefork children come and go, and
Redis is already the one place every process reaches. The cost is a few `HINCRBY`s per stage per
job. Every API instance reports the same cluster numbers: aggregate them with `max`, not `sum`
(the Grafana dashboard in deploy/ does).

A third source, **the broker's queues** (length, oldest message's age, live workers), is read
from the broker's Redis by yousync/observability/broker_queues.py, in the same scrape.
"""

from __future__ import annotations

import asyncio
import logging
import math
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import anyio
from prometheus_client import REGISTRY, Counter, Histogram
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
from yousync.observability import broker_queues

if TYPE_CHECKING:
    import redis
    import redis.asyncio as aioredis

log = logging.getLogger(__name__)


class HubStats(Protocol):
    """What the scrape reads off the API's event hub. A Protocol, so observability does not
    import the API (the hub satisfies it structurally)."""

    @property
    def client_count(self) -> int: ...
    @property
    def notifications_received(self) -> int: ...
    @property
    def reconnects(self) -> int: ...
    @property
    def connected(self) -> asyncio.Event: ...


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

# --- this API process ---------------------------------------------------------------------

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


class _HubCollector(Collector):
    """Reads the live hub at scrape time (no bookkeeping in the hot path)."""

    def __init__(self) -> None:
        self._hub: weakref.ref[HubStats] | None = None

    def bind(self, hub: HubStats) -> None:
        self._hub = weakref.ref(hub)

    def collect(self) -> Iterator[Metric]:
        hub = self._hub() if self._hub is not None else None
        clients = GaugeMetricFamily(
            "yousync_sse_clients", "SSE clients connected to this API process (job and token)."
        )
        clients.add_metric([], hub.client_count if hub else 0)
        yield clients
        received = CounterMetricFamily(
            "yousync_hub_notifications",
            "Job notifications received by this process's pub/sub subscription.",
        )
        received.add_metric([], hub.notifications_received if hub else 0)
        yield received
        reconnects = CounterMetricFamily(
            "yousync_hub_reconnects", "Times the hub lost its Redis subscription and reconnected."
        )
        reconnects.add_metric([], hub.reconnects if hub else 0)
        yield reconnects
        connected = GaugeMetricFamily(
            "yousync_hub_connected", "1 while the hub's Redis subscription is up."
        )
        connected.add_metric([], 1 if hub and hub.connected.is_set() else 0)
        yield connected


_HUB = _HubCollector()
REGISTRY.register(_HUB)


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
                finished, stages = await pipe.execute()
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning("metrics: cluster metrics unavailable (%s)", exc)
        return ClusterSnapshot(up=False, jobs_finished={}, stage_seconds={})
    return ClusterSnapshot(
        up=True, jobs_finished=_decoded(finished), stage_seconds=_decoded(stages)
    )


class _ClusterCollector(Collector):
    """Renders the snapshot the /metrics handler just read (an async Redis read cannot happen
    inside a synchronous `collect`). Set and rendered with no await in between, so concurrent
    scrapes cannot see each other's snapshot; outside a scrape it yields nothing."""

    def __init__(self) -> None:
        self.snapshot: ClusterSnapshot | None = None

    def collect(self) -> Iterable[Metric]:
        snap = self.snapshot
        if snap is None:
            return
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


_CLUSTER = _ClusterCollector()
REGISTRY.register(_CLUSTER)


def render(
    snapshot: ClusterSnapshot,
    accept: str | None,
    broker: broker_queues.BrokerSnapshot | None = None,
) -> tuple[bytes, str]:
    """The exposition body and its content type, negotiated from the scraper's Accept header
    (Prometheus text 0.0.4 by default, OpenMetrics when asked). `broker` is None when the
    broker is not Redis (no queue series then)."""
    encoder, content_type = choose_encoder(accept or "")
    _CLUSTER.snapshot = snapshot
    broker_queues.COLLECTOR.snapshot = broker
    try:
        return encoder(REGISTRY), content_type
    finally:
        _CLUSTER.snapshot = None
        broker_queues.COLLECTOR.snapshot = None


@dataclass
class ApiMetrics:
    """What the lifespan hands to the /metrics route: the Redis client for cluster numbers and
    the broker's reader (None when the broker is not Redis)."""

    redis: aioredis.Redis
    broker: broker_queues.BrokerReader | None = None

    async def read(self) -> tuple[ClusterSnapshot, broker_queues.BrokerSnapshot | None]:
        """Both reads at once: they go to different clients, maybe different servers."""
        if self.broker is None:
            return await read_cluster(self.redis), None
        cluster, broker = await asyncio.gather(read_cluster(self.redis), self.broker.read())
        return cluster, broker


def bind(
    *, hub: HubStats, redis: aioredis.Redis, broker: broker_queues.BrokerReader | None = None
) -> ApiMetrics:
    """Called once by the API's lifespan."""
    _HUB.bind(hub)
    return ApiMetrics(redis=redis, broker=broker)
