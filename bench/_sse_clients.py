"""Thousands of SSE clients in one process, for the fan-out benchmark.

Why raw protocols instead of httpx or aiohttp: an HTTP client library costs tens of KB and a
task per stream, so at 10,000 streams the client side would be the bottleneck and would distort
the delivery latency we want to measure on the server. Each connection here is one
`asyncio.Protocol` with a few slots; it sends one `GET` and scans what arrives for the
timestamp the benchmark embedded in each event (`"message":"t=<epoch seconds>"`) and for the
event's `id:` (a Redis Stream id, `<ms>-<seq>`, increasing within one stream). Each connection
keeps only the last id it saw and two counters: an id at or below the last one is a repeated
event (counted, not recorded again), so a benchmark can check exactly-once delivery per
connection (`tally`) without keeping every id.

The orchestrator drives a client process through a `multiprocessing` pipe with commands
(`connect`, `record`, `count`, `receipts`, `tally`, `reconnect`, `reconnects`, `close`, `stop`)
so that it can sample the server's memory, CPU and Redis counters between phases while the
connections stay open. With `reconnect` on, a client whose held stream the server closes opens
it again like a browser's EventSource — after the `retry:` the server sent, with
`Last-Event-ID` — and its counters carry over, so exactly-once holds across a restart.
"""

from __future__ import annotations

import asyncio
import gc
import math
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

# The job snapshot JSON is compact (pydantic's model_dump_json, or json.dumps with
# separators in the naive reference app), so the marker never contains whitespace. An event's
# `id:` line comes before its `data:` line (sse-starlette's encoding); the naive reference app
# sends none, so there every event counts as new.
EVENT = re.compile(rb'^id: (\d+)-(\d+)|"message":"t=(\d+\.\d+)"|^retry: (\d+)', re.MULTILINE)
DEFAULT_RETRY_MS = 3000  # EventSource's own default when the server sent no `retry:`
REFUSED_RETRY_S = 1.0  # after a non-200 on a reconnect, as the progress page's first delay
NO_ID = (0, 0)


@dataclass
class _Fleet:
    """State shared by all connections of this process."""

    connections: list[SseConnection] = field(default_factory=list)
    # (write time embedded in the event, receipt time), both epoch seconds
    receipts: list[tuple[float, float]] = field(default_factory=list)
    first_event_seconds: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    record_from: float = math.inf
    held: int = 0
    lost: int = 0
    # Reconnecting like a browser (`reconnect` command): after the server closes a held stream,
    # open it again after its `retry:` delay with `Last-Event-ID`, until `close`.
    reconnect: bool = False
    closing: bool = False
    reconnects: int = 0
    reconnect_failures: Counter[str] = field(default_factory=Counter)
    # Seconds from losing a stream to the 200 of its next connection.
    reconnect_seconds: list[float] = field(default_factory=list)


# Chunked transfer encoding's terminating chunk: the end of a response (RFC 9112 §7.1).
LAST_CHUNK = b"0\r\n\r\n"


class SseConnection(asyncio.Protocol):
    """One EventSource-like client: `GET path`, then count events as they arrive."""

    __slots__ = (
        "duplicates",
        "events",
        "first",
        "first_event",
        "fleet",
        "gone",
        "held_at",
        "host",
        "index",
        "last_id",
        "lost_at",
        "path",
        "port",
        "repeat",
        "request",
        "retry_ms",
        "started",
        "status",
        "tail",
        "transport",
    )

    def __init__(
        self,
        fleet: _Fleet,
        host: str,
        port: int,
        path: str,
        previous: SseConnection | None = None,
    ) -> None:
        self.fleet = fleet
        self.path = path
        self.host, self.port = host, port
        resume = ""
        if previous is not None and previous.last_id != NO_ID:
            resume = f"Last-Event-ID: {previous.last_id[0]}-{previous.last_id[1]}\r\n"
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n"
            f"Cache-Control: no-cache\r\n{resume}\r\n"
        ).encode()
        self.transport: asyncio.Transport | None = None
        self.status: bytes | None = None
        self.first = False
        self.tail = b""
        self.started = time.time()
        self.held_at = math.inf  # receipt time of the first `data:` line
        self.last_id = NO_ID  # the highest event id received so far
        self.repeat = False  # the event being read has an id already received
        self.events = 0  # recorded events (see `record`), each counted once
        self.duplicates = 0  # events whose id was at or below one already received
        self.retry_ms = DEFAULT_RETRY_MS
        self.index = -1  # position in fleet.connections
        self.lost_at = 0.0  # when the previous connection of this client was lost
        if previous is not None:  # the same client, reconnecting: its history carries over
            self.first, self.held_at, self.last_id = True, previous.held_at, previous.last_id
            self.events, self.duplicates = previous.events, previous.duplicates
            self.retry_ms, self.index, self.lost_at = (
                previous.retry_ms,
                previous.index,
                previous.lost_at,
            )
        loop = asyncio.get_running_loop()
        self.first_event: asyncio.Future[bool] = loop.create_future()
        self.gone: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        if self.status is None:
            self.status = data[9:12]  # "HTTP/1.1 200 OK"
            if self.lost_at:  # a reconnect
                if self.status == b"200":
                    self.fleet.held += 1
                    self.fleet.lost -= 1
                    self.fleet.reconnect_seconds.append(now - self.lost_at)
                    self.lost_at = 0.0
                else:
                    self.fleet.reconnect_failures[self.status.decode(errors="replace")] += 1
                    assert self.transport is not None
                    self.transport.close()
                    return
            elif self.status != b"200":
                self.fleet.failures[f"http_{self.status.decode(errors='replace')}"] += 1
                self._resolve_first(False)
                assert self.transport is not None
                self.transport.close()
                return
        if data.endswith(LAST_CHUNK) and (
            data == LAST_CHUNK or data.endswith(b"\r\n" + LAST_CHUNK)
        ):
            # The response ended (chunked encoding's last chunk) on a connection the server
            # keeps open, as a proxy does: an EventSource reconnects now, so this client does.
            self._read(data[: -len(LAST_CHUNK)], now)
            assert self.transport is not None
            self.transport.close()
            return
        self._read(data, now)

    def _read(self, data: bytes, now: float) -> None:
        buffer = self.tail + data if self.tail else data
        # A marker never spans a newline, so everything before the last one is complete.
        cut = buffer.rfind(b"\n")
        if cut < 0:
            self.tail = buffer
            return
        complete, self.tail = buffer[:cut], buffer[cut + 1 :]
        if not self.first and b"data:" in complete:
            self.first = True
            self.held_at = now
            self.fleet.held += 1
            self.fleet.first_event_seconds.append(now - self.started)
            self._resolve_first(True)
        fleet = self.fleet
        recording = now >= fleet.record_from
        for match in EVENT.finditer(complete):
            if match.group(4) is not None:
                self.retry_ms = int(match.group(4))
            elif match.group(1) is not None:
                event_id = (int(match.group(1)), int(match.group(2)))
                self.repeat = event_id <= self.last_id
                if self.repeat:
                    self.duplicates += 1
                else:
                    self.last_id = event_id
            elif recording and not self.repeat:
                written = float(match.group(3))
                if written >= fleet.record_from:
                    fleet.receipts.append((written, now))
                    self.events += 1

    def connection_lost(self, exc: Exception | None) -> None:
        fleet = self.fleet
        if self.lost_at:  # a reconnect that got no 200: try again, as the progress page does
            if fleet.reconnect and not fleet.closing:
                asyncio.get_running_loop().call_later(REFUSED_RETRY_S, self._reopen)
        elif self.first:
            fleet.held -= 1
            fleet.lost += 1
            if fleet.reconnect and not fleet.closing:
                self.lost_at = time.time()
                asyncio.get_running_loop().call_later(self.retry_ms / 1000, self._reopen)
        elif self.status is None:
            # Closed or reset by the server before any response byte arrived.
            self.fleet.failures[f"closed_before_response_{type(exc).__name__}"] += 1
        self._resolve_first(False)
        if not self.gone.done():
            self.gone.set_result(None)

    def _reopen(self) -> None:
        if self.fleet.closing:
            return
        self.fleet.reconnects += 1
        successor = SseConnection(self.fleet, self.host, self.port, self.path, previous=self)
        self.fleet.connections[self.index] = successor
        loop = asyncio.get_running_loop()
        attempt = loop.create_task(loop.create_connection(lambda: successor, self.host, self.port))
        attempt.add_done_callback(successor._connected)

    def _connected(self, attempt: asyncio.Task[Any]) -> None:
        if attempt.cancelled() or attempt.exception() is not None:
            self.fleet.reconnect_failures["connect"] += 1
            self.connection_lost(None)  # counts as a refused reconnect: try again

    def _resolve_first(self, ok: bool) -> None:
        if not self.first_event.done():
            self.first_event.set_result(ok)


async def _open(fleet: _Fleet, host: str, port: int, path: str, limit: float) -> None:
    loop = asyncio.get_running_loop()
    connection = SseConnection(fleet, host, port, path)
    try:
        await asyncio.wait_for(
            loop.create_connection(lambda: connection, host, port), timeout=limit
        )
    except (OSError, TimeoutError) as exc:
        fleet.failures[f"connect_{type(exc).__name__}_{getattr(exc, 'errno', '')}"] += 1
        return
    connection.index = len(fleet.connections)
    fleet.connections.append(connection)
    try:
        await asyncio.wait_for(asyncio.shield(connection.first_event), timeout=limit)
    except TimeoutError:
        fleet.failures["no_first_event"] += 1


async def connect(
    fleet: _Fleet, host: str, port: int, paths: list[str], batch: int, limit: float
) -> dict[str, Any]:
    """Open one connection per path, `batch` at a time (a burst of 10,000 SYNs would overflow
    the listen backlog and measure the kernel's retry timer instead of the server)."""
    started = time.perf_counter()
    for offset in range(0, len(paths), batch):
        chunk = paths[offset : offset + batch]
        await asyncio.gather(*(_open(fleet, host, port, path, limit) for path in chunk))
    return {
        "held": fleet.held,
        "lost": fleet.lost,
        "open": sum(1 for c in fleet.connections if not c.gone.done()),
        "failures": dict(fleet.failures),
        "seconds": time.perf_counter() - started,
        "first_event_seconds": fleet.first_event_seconds,
    }


async def close_all(fleet: _Fleet, limit: float) -> dict[str, Any]:
    fleet.closing = True
    for connection in fleet.connections:
        if connection.transport is not None:
            connection.transport.close()
    pending = [c.gone for c in fleet.connections if not c.gone.done()]
    if pending:
        await asyncio.wait(pending, timeout=limit)
    closed = len(fleet.connections)
    fleet.connections.clear()
    fleet.held = 0
    fleet.lost = 0
    fleet.first_event_seconds.clear()
    fleet.failures.clear()
    fleet.reconnect, fleet.closing, fleet.reconnects = False, False, 0
    fleet.reconnect_failures.clear()
    fleet.reconnect_seconds.clear()
    return {"closed": closed}


async def _serve(pipe: Connection) -> None:
    loop = asyncio.get_running_loop()
    fleet = _Fleet()
    while True:
        command, args = await loop.run_in_executor(None, pipe.recv)
        reply: Any
        if command == "connect":
            reply = await connect(fleet, *args)
        elif command == "record":
            fleet.receipts.clear()
            fleet.record_from = float(args[0])
            reply = True
        elif command == "reconnect":
            fleet.reconnect = bool(args[0])
            reply = True
        elif command == "reconnects":
            reply = {
                "attempts": fleet.reconnects,
                "failures": dict(fleet.reconnect_failures),
                "seconds": fleet.reconnect_seconds,
                "held": fleet.held,
                "lost": fleet.lost,
            }
        elif command == "count":
            reply = len(fleet.receipts)
        elif command == "receipts":
            reply = {"receipts": fleet.receipts, "held": fleet.held, "lost": fleet.lost}
            fleet.receipts = []
            fleet.record_from = math.inf
        elif command == "tally":
            # Per connection: (path, time its first `data:` arrived, recorded events,
            # repeated events, still open).
            reply = [
                (c.path, c.held_at, c.events, c.duplicates, not c.gone.done())
                for c in fleet.connections
            ]
        elif command == "close":
            reply = await close_all(fleet, *args)
        elif command == "stop":
            pipe.send(True)
            return
        else:
            reply = {"error": f"unknown command {command!r}"}
        pipe.send(reply)


def serve(pipe: Connection) -> None:
    """Entry point of a client process (multiprocessing target)."""
    # No cyclic collections here: a client process holding thousands of connections and a
    # growing list of receipts would pause for its own full collections, and each pause would
    # be counted as the server's delivery latency. These processes live for one phase.
    gc.disable()
    try:
        import uvloop  # the server's loop too; keeps the client side from being the bottleneck
    except ImportError:
        asyncio.run(_serve(pipe))
    else:
        uvloop.run(_serve(pipe))
