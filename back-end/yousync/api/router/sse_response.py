"""sse-starlette's EventSourceResponse with a lighter supervisor for its per-connection loops.

Why: an idle progress stream is mostly waiting, and at thousands of streams per process what
each one keeps alive is the API's memory. The stock `__call__` runs the event stream, the ping
loop, the shutdown watcher and the disconnect listener as four anyio tasks in a task group;
since anyio 4.14 every such task also carries a TaskHandle (a CancelScope and an Event with its
own deque), so the supervision alone cost ~13 KB per client (bench/bench_sse_memory.py).

What stays sse-starlette's: every loop (`_stream_response` with `send_timeout` and the
generator's cleanup on failure, `_ping`, `_listen_for_disconnect`,
`_listen_for_exit_signal_with_grace` with `shutdown_event` and the grace period), the headers,
and HEAD handling. What differs is only who runs them: the stream runs in the request's own task
inside one anyio CancelScope, and the three watchers are plain asyncio tasks whose completion
cancels that scope — the same "first one to finish ends the response" rule as the library's
`cancel_on_finish`, and cancellation still reaches the stream through anyio, so the library's
shielded cleanup keeps working. A watcher's exception (a ping that hit `send_timeout`) is raised
after the stream has stopped, as the task group would.

One more difference, per event: the library wraps every send in an anyio deadline
(`move_on_after(send_timeout)`: a CancelScope and a timer, ~7 µs — a tenth of what delivering an
event costs at 5,000 busy clients). With pings on, an event's send skips it: a transport that
stopped draining blocks the next ping's send too, and that one keeps the library's deadline, so
a client that stopped reading is still cut off with `SendTimeoutError` — within
ping interval + `send_timeout` instead of `send_timeout`. With pings off every send keeps it.

Responses that use `data_sender_callable`, and non-HTTP scopes, go through the stock `__call__`.
Re-check this against sse-starlette's `__call__` when upgrading it (pinned in requirements.txt).
"""

from __future__ import annotations

import asyncio

import anyio
from sse_starlette import EventSourceResponse
from starlette.types import Message, Receive, Scope, Send


class CompactEventSourceResponse(EventSourceResponse):
    _stream_task: asyncio.Task[object] | None = None

    async def _send_with_timeout(self, send: Send, message: Message) -> None:
        if self.ping_interval > 0 and asyncio.current_task() is self._stream_task:
            await send(message)  # the pings' deadline covers a stalled client (see above)
            return
        await super()._send_with_timeout(send, message)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"].upper() == "HEAD"
            or self.data_sender_callable is not None
        ):
            await super().__call__(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        watchers = [
            loop.create_task(self._listen_for_disconnect(receive)),
            loop.create_task(self._listen_for_exit_signal_with_grace()),
        ]
        if self.ping_interval > 0:  # 0 disables pings, as in the library
            watchers.append(loop.create_task(self._ping(send)))
        with anyio.CancelScope() as stream_scope:

            def end_stream(_: asyncio.Task[None]) -> None:
                stream_scope.cancel()

            for watcher in watchers:
                watcher.add_done_callback(end_stream)
            try:
                self._stream_task = asyncio.current_task()
                await self._stream_response(send)
            finally:
                for watcher in watchers:
                    watcher.remove_done_callback(end_stream)
                    watcher.cancel()
                with anyio.CancelScope(shield=True):
                    await asyncio.wait(watchers)
                # Retrieved in every case, so asyncio never logs one as unretrieved.
                errors = [w.exception() for w in watchers if not w.cancelled()]
        error = next((exc for exc in errors if exc is not None), None)
        if error is not None:
            raise error
        if self.background is not None:
            await self.background()
