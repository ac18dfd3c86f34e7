"""REFERENCE ONLY — never part of the product. Six minimal idle-stream servers, each thinner
than the product, so bench/bench_sse_memory.py can say where the API's memory per
SSE client goes:

  raw_app        pure ASGI: send the headers and one event, then wait for the disconnect
                 (the floor: uvicorn's protocol objects, one task, the socket)
  streaming_app  Starlette + StreamingResponse over an async generator waiting on the
                 product's per-client mailbox (yousync.api.streaming.events.Subscription)
  sse_app        Starlette + sse-starlette's EventSourceResponse over the same generator,
                 with the product's ping and send timeout (its per-connection task group)
  compact_sse_app  the same with the product's CompactEventSourceResponse
                 (yousync/api/router/sse_response.py: the library's loops, lighter
                 supervision)
  fastapi_streaming_app  FastAPI (no middleware, no dependencies) + StreamingResponse over
                 the same mailbox: what FastAPI's request handling keeps per open response,
                 before any SSE machinery
  fastapi_compact_app    FastAPI + CompactEventSourceResponse, still without the product's
                 middleware, auth, hub or replay

`GET /stream/{anything}` opens a stream; `GET /healthz` answers 200. When BENCH_GC_LOG is set,
bench/_gc_probe.py's hooks are installed (the same ones the product's API gets in the bench).

Run: `uvicorn bench.sse_floor_apps:sse_app` from the repository root.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from bench._gc_probe import install
from yousync.api.router.sse_response import CompactEventSourceResponse
from yousync.api.streaming.events import Subscription

if os.environ.get("BENCH_GC_LOG"):
    install(Path(os.environ["BENCH_GC_LOG"]))

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# Looks like the product's first event to the benchmark's clients (they count `data:`).
FIRST_EVENT = b'id: 0-1\r\ndata: {"status":"queued","message":"floor"}\r\n\r\n'
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-store")]


async def raw_app(scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/healthz":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
    await send({"type": "http.response.body", "body": FIRST_EVENT, "more_body": True})
    while (await receive())["type"] != "http.disconnect":
        pass


async def _events() -> AsyncIterator[bytes]:
    mailbox = Subscription(64)  # what a hub subscription gives each client
    yield FIRST_EVENT
    while True:
        await mailbox.get()  # nothing is ever offered here: the stream stays idle


async def _sse_events() -> AsyncIterator[dict[str, str]]:
    mailbox = Subscription(64)
    yield {"id": "0-1", "data": '{"status":"queued","message":"floor"}'}
    while True:
        await mailbox.get()  # idle, as above


async def _healthz(_: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def _streaming(_: Request) -> Response:
    return StreamingResponse(_events(), media_type="text/event-stream")


async def _sse(_: Request) -> Response:
    return EventSourceResponse(_sse_events(), ping=15, send_timeout=30)


async def _compact_sse(_: Request) -> Response:
    return CompactEventSourceResponse(_sse_events(), ping=15, send_timeout=30)


streaming_app = Starlette(routes=[Route("/stream/{key}", _streaming), Route("/healthz", _healthz)])
sse_app = Starlette(routes=[Route("/stream/{key}", _sse), Route("/healthz", _healthz)])
compact_sse_app = Starlette(
    routes=[Route("/stream/{key}", _compact_sse), Route("/healthz", _healthz)]
)


fastapi_streaming_app = FastAPI()
fastapi_streaming_app.add_api_route("/stream/{key}", _streaming)
fastapi_streaming_app.add_api_route("/healthz", _healthz)
fastapi_compact_app = FastAPI()
fastapi_compact_app.add_api_route("/stream/{key}", _compact_sse)
fastapi_compact_app.add_api_route("/healthz", _healthz)
