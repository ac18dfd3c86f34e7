"""The cluster stage histogram as the workers write it and the scrape reads it (real Redis)."""

from __future__ import annotations

import redis

from yousync.core import keys
from yousync.observability import metrics


def test_record_stage_when_observations_fall_in_different_buckets_then_scrape_cumulates(
    redis_client: redis.Redis,
) -> None:
    for seconds in (0.01, 0.3, 0.3, 1e9):
        metrics.record_stage(redis_client, "uploading", seconds)
    fields = redis_client.hgetall(keys.METRICS_STAGE_SECONDS)

    buckets = dict(metrics.cumulative_buckets(fields, "uploading"))

    smallest = metrics.STAGE_BUCKETS[0]
    assert buckets[metrics._bound(smallest)] == 1  # only 0.01 s is at or below the first bound
    assert buckets[metrics._bound(0.5)] == 3
    assert buckets["+Inf"] == 4 == int(fields["uploading|count"])
    counts = list(buckets.values())
    assert counts == sorted(counts)  # cumulative: never decreasing
    assert float(fields["uploading|sum"]) > 1e9


def test_record_stage_when_seconds_negative_then_counted_as_zero(
    redis_client: redis.Redis,
) -> None:
    metrics.record_stage(redis_client, "storing", -3.0)
    fields = redis_client.hgetall(keys.METRICS_STAGE_SECONDS)
    assert dict(metrics.cumulative_buckets(fields, "storing"))[metrics._bound(0.5)] == 1
    assert float(fields["storing|sum"]) == 0.0
