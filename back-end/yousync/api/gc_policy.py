"""When the API process lets Python's cyclic garbage collector pause it.

Why: every open SSE stream is a few hundred long-lived objects (its connection, request, tasks,
generator), and CPython's full collection walks every tracked object while the event loop
stands still — 0.65–1.3 s with 10,000 streams, felt by every client of the process at once.
CPython runs one whenever a quarter more objects have been promoted to its oldest generation
since the last, so a storm of reconnects that builds the heap pays for it several times over
(a quarter of a storm's CPU, bench/bench_sse_storm.py). Young collections hurt too: a busy
stream's waiting state (its future, the generator's pending send: ~7 objects) is remade at
every event, and because CPython counts a dying old object against a new one, a steady stream
of events never triggers a young collection until a burst does — which then walks every
client's waiting state at once (37,000 objects with 5,000 clients: 15 ms, measured).

The policy: every `every` seconds everything the collector tracks is frozen (`gc.freeze()`:
O(1), it takes the objects out of the collector's reach; reference counting still frees them
when they die). A stream's objects are frozen a moment after it starts and a waiting state a
moment after it is made, so collections only ever walk the last moment's objects: small.

What freezing costs is cycles that die while frozen: they stay until the next *rebase* —
unfreeze, one full collection, freeze again — whose pause walks the whole heap (0.7–1.3 s with
5,000 streams). Measured, there are almost none: a rebase after 5,000 streams ended found 0–40
unreachable objects (a stream's objects are freed by reference counting, frozen or not), and a
steady busy stream makes none. So rebases are rare: when a process's streams have all ended
(after `idle_seconds`, so their teardown is done; cheap then), when `turnover` × the streams
open at the last rebase (at least `min_ended`) have ended since, or after `max_age`. Each rebase
ends with `malloc_trim`, so the pages the ended streams' memory occupied go back to the system.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


def _none() -> int:
    return 0


def _load_malloc_trim() -> ctypes._NamedFuncPointer | None:
    """glibc's malloc_trim, or None on other C libraries (musl, macOS): then a no-op."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _load_malloc_trim()


def give_back_free_memory() -> None:
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


@dataclass
class GcPolicy:
    every: float = 0.1
    turnover: float = 10.0
    min_ended: int = 10_000
    idle_seconds: float = 1.0
    max_age: float = 3600.0
    # The stream counts the policy follows (the event hub's); none by default.
    open_streams: Callable[[], int] = field(default=_none)
    ended_streams: Callable[[], int] = field(default=_none)
    rebases: int = 0
    _due_after_ended: int = 0
    _ended_at_rebase: int = 0
    _ended_at_idle: int = 0
    _rebased_at: float = 0.0
    # When the last rebase began: what it collected is what was dead by then.
    _rebase_began_at: float = 0.0
    _idle_since: float | None = None

    def start(self) -> None:
        """At startup: what the imports and the app built never dies; freeze it once."""
        self.rebase()

    def rebase(self) -> None:
        started = self._rebase_began_at = time.monotonic()
        gc.unfreeze()
        unreachable = gc.collect()
        gc.freeze()
        give_back_free_memory()
        self._rebased_at = time.monotonic()
        self._ended_at_rebase = self.ended_streams()
        self._due_after_ended = self._ended_at_rebase + max(
            self.min_ended, int(self.turnover * self.open_streams())
        )
        self.rebases += 1
        log.info(
            "gc rebase: %d unreachable objects freed, %d objects frozen, %.0f ms",
            unreachable,
            gc.get_freeze_count(),
            (self._rebased_at - started) * 1000,
        )

    def _idle_for(self, now: float) -> float:
        if self.open_streams() > 0:
            self._idle_since = None
            return 0.0
        if self._idle_since is None:
            self._idle_since = now
        return now - self._idle_since

    def idle_rebase_due(self) -> bool:
        """Streams ended since the last idle rebase, none is open, and none has been for
        `idle_seconds` (their teardown is done) without a rebase since — a turnover rebase
        that ran while they were still being torn down does not count."""
        now = time.monotonic()
        if self._idle_for(now) < self.idle_seconds or self._idle_since is None:
            return False
        settled_at = self._idle_since + self.idle_seconds
        # Judged by when the last rebase *began*: one that began before the teardown settled
        # missed what died after, however long its collection took on a busy host.
        return self._rebase_began_at < settled_at and self.ended_streams() > self._ended_at_idle

    def rebase_due(self) -> bool:
        return (
            self.ended_streams() >= self._due_after_ended
            or time.monotonic() - self._rebased_at >= self.max_age
        )

    def tick(self) -> None:
        if self.idle_rebase_due():
            self._ended_at_idle = self.ended_streams()
            self.rebase()
        elif self.rebase_due():
            self.rebase()
        else:
            gc.freeze()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            self.tick()
