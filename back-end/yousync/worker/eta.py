"""Estimated seconds left for a running job (`eta_seconds`), or None while unknown.

The current stage is extrapolated from its own observed rate once it is far enough along to
mean something; stages not started yet are taken from recent jobs of similar size (an
exponentially weighted mean per stage and size bucket, kept in Redis by the workers).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from yousync.core.stages import WORKED_STAGES, Stage

STAGE_SPANS: dict[Stage, tuple[int, int]] = {stage: stage.span for stage in WORKED_STAGES}
STAGE_ORDER = list(WORKED_STAGES)
# Below this share of a stage, its own rate is noise; fall back to history.
MIN_FRACTION_FOR_RATE = 0.1


def size_bucket(size_bytes: int) -> int:
    """Powers of two in MB: jobs of 0.6 MB and 0.9 MB share a bucket, 1 MB and 40 MB don't."""
    return max(-3, math.floor(math.log2(max(size_bytes, 1) / (1024 * 1024))))


def history_key(stage: Stage, bucket: int) -> str:
    return f"{stage.value}:{bucket}"


class EtaEstimator:
    def __init__(
        self,
        *,
        size_bytes: int,
        history: dict[str, float],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bucket = size_bucket(size_bytes)
        self._history = history
        self._clock = clock
        self._stage: Stage | None = None
        self._stage_started = 0.0

    def enter(self, stage: Stage) -> tuple[Stage, float] | None:
        """Note the stage now running; returns (finished stage, its seconds) when one ended."""
        if stage == self._stage:
            return None
        now = self._clock()
        finished = (self._stage, now - self._stage_started) if self._stage else None
        self._stage, self._stage_started = stage, now
        return finished

    def _expected(self, stage: Stage) -> float | None:
        return self._history.get(history_key(stage, self.bucket))

    def estimate(self, stage: Stage, progress: float) -> float | None:
        if stage not in STAGE_SPANS:
            return None
        start, end = STAGE_SPANS[stage]
        fraction = min(max((progress - start) / (end - start), 0.0), 1.0)
        elapsed = self._clock() - self._stage_started
        if fraction >= MIN_FRACTION_FOR_RATE:
            remaining: float | None = elapsed * (1 - fraction) / fraction
        else:
            expected = self._expected(stage)
            remaining = None if expected is None else max(expected - elapsed, 0.0)
        if remaining is None:
            return None
        for later in STAGE_ORDER[STAGE_ORDER.index(stage) + 1 :]:
            expected = self._expected(later)
            if expected is None:
                return None
            remaining += expected
        return round(remaining, 1)
