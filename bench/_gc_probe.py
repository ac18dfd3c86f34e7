"""Garbage-collector evidence from inside a server process, without changing how it serves.

Why: with thousands of open streams every full (generation 2) collection walks every
container object of every connection while the event loop stands still, so one collection
delays every delivery in flight. Benchmarks need to see those pauses next to the latencies
they measure, and to count the objects each connection keeps alive.

`install(path)` adds a `gc.callbacks` hook that appends one line per collection slower than
`PAUSE_MS` (`pause <epoch> <generation> <ms>`), and a SIGUSR1 handler that appends one line
`snapshot <json>`: tracked objects before and after a forced full collection (frozen ones
apart: `frozen`), the time it took,
the most common types, and the number of asyncio tasks of the process's running event loop
(`tasks`; null when the signal arrives while no loop runs). The log is plain text so any
process (uvicorn app or not) can write it cheaply.

Why the tasks are counted from a loop callback: a Python signal handler runs in the main
thread between any two bytecodes, possibly in the middle of the loop's own bookkeeping (a task
being created or finished), so the handler only finds the running loop and asks it, with
`call_soon_threadsafe`, to count its tasks and write the line from a callback, at a point where
no task is half made. `request_snapshot`'s poke wakes the loop for that callback too.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

PAUSE_MS = 5.0


def install(path: Path) -> None:
    started: list[float] = [0.0]
    log = path.open("a", buffering=1)  # line-buffered: readable while the server runs

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        ms = (time.perf_counter() - started[0]) * 1000
        if ms >= PAUSE_MS:
            log.write(f"pause {time.time():.3f} {info['generation']} {ms:.1f}\n")

    def write(snapshot: dict[str, Any]) -> None:
        log.write(f"snapshot {json.dumps(snapshot)}\n")

    def on_signal(_signum: int, _frame: Any) -> None:
        objects = gc.get_objects()
        counts = collections.Counter(type(obj).__qualname__ for obj in objects)
        total = len(objects)
        del objects
        begin = time.perf_counter()
        gc.collect()
        full_ms = (time.perf_counter() - begin) * 1000
        snapshot = {
            "objects": total,
            "objects_after_gc": len(gc.get_objects()),
            # The API freezes what the collector tracks (yousync/api/gc_policy.py): frozen
            # objects are in neither count above, nor touched by the forced collection.
            "frozen": gc.get_freeze_count(),
            "full_gc_ms": round(full_ms, 1),
            "types": counts,
        }
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # before the server's loop started, or after it stopped
            write({**snapshot, "tasks": None})
            return

        def count_tasks() -> None:
            write({**snapshot, "tasks": len(asyncio.all_tasks(loop))})

        loop.call_soon_threadsafe(count_tasks)

    gc.callbacks.append(on_gc)
    signal.signal(signal.SIGUSR1, on_signal)


def read_pauses(path: Path, since: float, until: float) -> list[tuple[float, int, float]]:
    """(epoch, generation, ms) of the collections logged between two epoch times."""
    pauses = []
    for line in path.read_text().splitlines() if path.exists() else []:
        if line.startswith("pause "):
            _, when, generation, ms = line.split()
            if since <= float(when) <= until:
                pauses.append((float(when), int(generation), float(ms)))
    return pauses


def request_snapshot(
    pid: int, path: Path, poke: Any = None, timeout: float = 60.0
) -> dict[str, Any]:
    """Signal the process and wait for its snapshot line. `poke()` (e.g. an HTTP request)
    wakes an idle event loop so the Python-level signal handler runs promptly."""
    before = len(path.read_text().splitlines()) if path.exists() else 0
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines()
        fresh = [line for line in lines[before:] if line.startswith("snapshot ")]
        if fresh:
            return json.loads(fresh[-1].removeprefix("snapshot "))
        if poke is not None:
            poke()
        time.sleep(0.2)
    raise TimeoutError(f"pid {pid} wrote no GC snapshot within {timeout:.0f}s")
