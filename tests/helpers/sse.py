"""A minimal SSE reader over a real HTTP connection (httpx streaming against uvicorn), parsing
the wire format the way a browser's EventSource does."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families


@dataclass
class SseEvent:
    id: str | None = None
    data: str = ""
    event: str | None = None
    retry: int | None = None
    comments: list[str] = field(default_factory=list)

    @property
    def json(self) -> dict[str, Any]:
        return dict(json.loads(self.data))


def parse_lines(lines: Iterator[str]) -> Iterator[SseEvent]:
    current = SseEvent()
    data_lines: list[str] = []
    for line in lines:
        if line == "":
            if data_lines:
                current.data = "\n".join(data_lines)
                yield current
            current, data_lines = SseEvent(), []
            continue
        if line.startswith(":"):
            current.comments.append(line[1:].strip())
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data_lines.append(value)
        elif name == "id":
            current.id = value
        elif name == "event":
            current.event = value
        elif name == "retry":
            current.retry = int(value)


def stream(
    url: str, *, headers: dict[str, str] | None = None, timeout: float = 30.0
) -> Iterator[SseEvent]:
    """Yields events until the server ends the stream (raises on a non-200 answer)."""
    with (
        httpx.Client(timeout=timeout) as client,
        client.stream(
            "GET", url, headers={"Accept": "text/event-stream", **(headers or {})}
        ) as response,
    ):
        response.raise_for_status()
        assert response.headers["content-type"].startswith("text/event-stream")
        yield from parse_lines(response.iter_lines())


def hub_clients(base: str, *, headers: dict[str, str] | None = None) -> int:
    """SSE clients the API process at `base` has registered with its event hub (its
    `yousync_sse_clients` gauge): a client counted here receives every later event live."""
    response = httpx.get(f"{base}/metrics", headers=headers or {}, timeout=10)
    response.raise_for_status()
    for family in text_string_to_metric_families(response.text):
        if family.name == "yousync_sse_clients":
            return int(family.samples[0].value)
    raise AssertionError("the API exports no yousync_sse_clients gauge")


@dataclass
class StreamStart:
    """What one of many simultaneous stream starts got: the status, the answer's headers, and
    the first event's data line when the answer was 200."""

    status: int
    headers: dict[str, str]
    first_data: str | None


async def _start_one(host: str, port: int, path: str) -> StreamStart:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n\r\n"
        writer.write(request.encode())
        status_line = await reader.readline()
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        status = int(status_line.split()[1])
        if status != 200:
            return StreamStart(status, headers, None)
        while line := await reader.readline():
            text = line.decode().strip()
            if text.startswith("data:"):
                return StreamStart(status, headers, text[5:].strip())
        return StreamStart(status, headers, None)
    finally:
        writer.close()


def start_at_once(base: str, paths: list[str], *, timeout: float = 30.0) -> list[StreamStart]:
    """Open every path at the same moment (no batching, like browsers reconnecting after a
    restart) over raw sockets, and return what each got; each connection closes after its
    first event."""
    url = httpx.URL(base)
    host, port = url.host, url.port or 80

    async def run() -> list[StreamStart]:
        starts = (asyncio.wait_for(_start_one(host, port, p), timeout) for p in paths)
        return list(await asyncio.gather(*starts))

    return asyncio.run(run())


def collect(url: str, out: list[SseEvent], **kwargs: Any) -> threading.Thread:
    """Reads in a thread until the stream ends, or until it has been silent for the read
    timeout: a token feed never ends, and a reader left open would stay connected to the
    session's shared API for every later test."""

    def run() -> None:
        with contextlib.suppress(httpx.ReadTimeout):
            out.extend(stream(url, **kwargs))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread
