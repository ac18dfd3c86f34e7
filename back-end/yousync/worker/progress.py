"""Progress writes from the worker: monotonic, throttled, and never lost at stage boundaries.

Byte callbacks and NDJSON lines can arrive hundreds of times a second; writing each would flood
Redis and every SSE client. A write happens when the integer percent grew and at least
`min_interval` passed, or always when `force` is set (stage boundaries).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from yousync.core.jobs import JobStore
from yousync.core.models import JobStatus
from yousync.core.stages import Stage
from yousync.worker import telemetry as worker_telemetry
from yousync.worker.eta import EtaEstimator, history_key


class ProgressReporter:
    def __init__(
        self,
        store: JobStore,
        job_id: str,
        token_id: str,
        *,
        start: int,
        min_interval: float,
        eta: EtaEstimator,
    ) -> None:
        self._store = store
        self._eta = eta
        self._job_id = job_id
        self._token_id = token_id
        self._min_interval = min_interval
        self._lock = threading.Lock()  # byte callbacks arrive on s3transfer's threads
        self.progress = start
        self._last_write = 0.0
        self.writes = 0

    def report(
        self, progress: float, stage: Stage, message: str, *, force: bool = False, **extra: Any
    ) -> None:
        percent = min(int(progress), 99)  # 100 is reserved for `completed`
        with self._lock:
            now = time.monotonic()
            grew = percent > self.progress
            if not force and (not grew or now - self._last_write < self._min_interval):
                return
            self.progress = max(self.progress, percent)
            self._last_write = now
            self.writes += 1
            self._enter(stage)
            extra.setdefault("eta_seconds", self._eta.estimate(stage, progress))
            self._store.update(
                self._job_id,
                self._token_id,
                status=JobStatus.PROCESSING,
                progress=self.progress,
                stage=stage,
                message=message,
                **extra,
            )

    def _enter(self, stage: Stage) -> None:
        finished = self._eta.enter(stage)
        if finished is not None:
            done, seconds = finished
            self._store.record_stage(history_key(done, self._eta.bucket), seconds)
            worker_telemetry.stage_finished(self._job_id, done.value, seconds, next_stage=stage)

    def finish(self) -> None:
        """Record the last stage's duration once the job completed."""
        with self._lock:
            self._enter(Stage.DONE)

    def span(self, stage: Stage, message: str) -> Any:
        """A callback mapping a 0–1 fraction of one stage onto its share of the bar."""
        start, end = stage.span

        def on_fraction(fraction: float, detail: str = "") -> None:
            text = f"{message} ({detail})" if detail else message
            self.report(start + (end - start) * max(0.0, min(fraction, 1.0)), stage, text)

        return on_fraction
