"""When the API process lets Python's cyclic garbage collector pause it.

Why: every open SSE stream is a few hundred long-lived objects (its connection, request, tasks,
generator), and CPython's full collection walks every tracked object while the event loop
stands still — 0.65–1.3 s with 10,000 streams, felt by every client of the process at once.
Worse, the collector runs a full collection each time the long-lived heap grew by a quarter, so
a storm of reconnects that builds the heap from nothing pays for it several times over
(`bench/bench_sse_storm.py`: a quarter of a storm's CPU went to collections).

The policy: objects that have survived a moment are frozen (`gc.freeze()` moves them out of the
collector's reach; reference counting still frees them when they die), so full collections
only walk what is new. Every `every` seconds a young-generation collection clears the cycles
made since the last tick, and what survives is frozen. Cycles that die after being frozen
(a stream that ended) stay until the next *rebase*: when the frozen set has grown by `growth`
times its size at the last rebase, everything is unfrozen, collected once, and frozen again.
Full pauses therefore come only when the process's long-lived heap has doubled (by default),
never in the steady state of a busy process whose clients stay connected, and frozen garbage is
bounded by the live heap (`bench/bench_sse_storm.py`'s soak checks that RSS plateaus).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

# A young collection every 10,000 net allocations instead of CPython's 700: a burst of events
# then allocates and frees its short-lived objects without the collector walking them.
YOUNG_THRESHOLD = 10_000


@dataclass
class GcPolicy:
    every: float = 1.0
    growth: float = 1.0
    rebases: int = 0
    _frozen_at_rebase: int = 0

    def start(self) -> None:
        """At startup: what the imports and the app built never dies; freeze it once. With
        `every` 0 that is all: CPython's own schedule decides the rest."""
        if self.every > 0:
            _, middle, old = gc.get_threshold()
            gc.set_threshold(YOUNG_THRESHOLD, middle, old)
        self.rebase()

    def rebase(self) -> None:
        started = time.perf_counter()
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        self._frozen_at_rebase = gc.get_freeze_count()
        self.rebases += 1
        log.debug(
            "gc rebase: %d objects frozen in %.0f ms",
            self._frozen_at_rebase,
            (time.perf_counter() - started) * 1000,
        )

    def tick(self) -> None:
        gc.collect(1)
        gc.freeze()
        if gc.get_freeze_count() > self._frozen_at_rebase * (1 + self.growth):
            self.rebase()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            self.tick()
