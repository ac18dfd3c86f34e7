"""`GET /metrics`: Prometheus text format (OpenMetrics when the scraper asks for it) — the API
processes' metrics (every process of this host in multiprocess mode), the cluster's and the
broker's queues, read from Redis at scrape time (yousync/observability/metrics.py says which is
which and why)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4

from yousync.observability import metrics

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    summary="Prometheus metrics: uploads, jobs, stage timings, queues, workers, SSE clients",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_PLAIN_0_0_4: {}}}},
)
async def prometheus_metrics(request: Request) -> Response:
    bound: metrics.ApiMetrics = request.app.state.metrics
    body, content_type = await bound.page(request.headers.get("accept"))
    return Response(body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})
