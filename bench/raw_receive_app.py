"""REFERENCE ONLY — never part of the product. The least any HTTP server can do with an upload:
receive the request body and write it to a file, then answer 202. No multipart parsing, no
hashing, no sniffing, no Redis, no broker.

Why: the upload benchmark compares the product's time-to-202 for a 50 MB file with this
server's time for the same bytes under the same uvicorn, so the ratio shows what the product's
own work (streaming multipart parse, SHA-256, size cap, fsync, job record, enqueue) adds to the
unavoidable cost of moving 50 MB through a socket onto disk. `?fsync=1` also fsyncs the file
before answering, to separate the cost of durability from the rest.

Run: `cd bench && SPOOL_DIR=/tmp/spool uvicorn raw_receive_app:app`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

SPOOL = Path(os.environ.get("SPOOL_DIR", "/tmp"))


async def _answer(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["path"] == "/healthz":
        await _answer(send, 200, b'{"status":"ok"}')
        return
    path = SPOOL / f"raw-{uuid.uuid4()}"
    size = 0
    with path.open("wb") as out:  # page-cache writes of ≤ 64 KB chunks: fast enough inline
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            out.write(chunk)
            size += len(chunk)
            more = message.get("more_body", False)
        if b"fsync=1" in scope.get("query_string", b""):
            # The product makes the spool file durable before answering; this variant shows
            # what that alone costs.
            out.flush()
            os.fsync(out.fileno())
    await _answer(send, 202, f'{{"status":"received","bytes":{size}}}'.encode())
