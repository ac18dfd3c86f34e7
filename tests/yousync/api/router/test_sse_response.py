"""CompactEventSourceResponse called as an ASGI app with a fake receive/send (starlette's and
sse-starlette's own way of testing responses): the library's behaviours must survive the
lighter supervisor — events then a closed body, disconnect, pings, send timeout, errors,
shutdown grace, HEAD, and outside cancellation — and no watcher task may outlive the response.
The real-uvicorn behaviour is in tests/yousync/api/streaming/test_progress_stream.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import pytest
from sse_starlette.sse import AppStatus, SendTimeoutError

from yousync.api.router.sse_response import CompactEventSourceResponse

Message = dict[str, Any]
SCOPE: dict[str, Any] = {"type": "http", "method": "GET", "asgi": {"spec_version": "2.3"}}


class Client:
    """Records what the response sends; `disconnect()` makes the next receive() say so."""

    def __init__(self, block_pings: bool = False, block_after: int | None = None) -> None:
        self.sent: list[Message] = []
        self._gone = asyncio.Event()
        self.streaming = asyncio.Event()  # set once the first event has been sent
        self._block_pings = block_pings
        self._block_after = block_after  # stop reading after this many body messages

    async def receive(self) -> Message:
        await self._gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if self._block_pings and message.get("body", b"").startswith(b": ping"):
            await asyncio.Event().wait()  # a client that stopped reading
        if self._block_after is not None and len(self.bodies) >= self._block_after:
            await asyncio.Event().wait()  # every send blocks from here: a stalled transport
        self.sent.append(message)
        if message.get("body"):
            self.streaming.set()

    def disconnect(self) -> None:
        self._gone.set()

    async def serve(self, response: CompactEventSourceResponse, scope: Message = SCOPE) -> None:
        await response(scope, self.receive, self.send)

    async def open(self, response: CompactEventSourceResponse) -> asyncio.Task[None]:
        """Starts the response in its own task; returns once its first event was sent."""
        call = asyncio.create_task(self.serve(response))
        await self.streaming.wait()
        return call

    @property
    def bodies(self) -> list[bytes]:
        return [m["body"] for m in self.sent if m["type"] == "http.response.body"]


class Generator:
    """An event source that records whether its cleanup ran."""

    def __init__(self, events: int, then_wait: bool = True, fail: bool = False) -> None:
        self.events, self.then_wait, self.fail = events, then_wait, fail
        self.closed = False

    async def __call__(self) -> AsyncIterator[dict[str, str]]:
        try:
            for index in range(self.events):
                yield {"id": f"1-{index}", "data": f"event {index}"}
            if self.fail:
                raise ValueError("generator failed")
            if self.then_wait:
                await asyncio.Event().wait()
        finally:
            self.closed = True


def run(body: Callable[[], Awaitable[None]]) -> None:
    async def checked() -> None:
        await asyncio.wait_for(body(), timeout=10)
        # sse-starlette's one shutdown watcher per event loop is shared, not per response.
        others = {
            task
            for task in asyncio.all_tasks() - {asyncio.current_task()}
            if task.get_coro().__qualname__ != "_shutdown_watcher"  # type: ignore[union-attr]
        }
        assert not others, f"tasks outlived the response: {others}"

    asyncio.run(checked())


def test_response_when_generator_ends_then_events_then_closed_body_and_no_task_left() -> None:
    source, client = Generator(2, then_wait=False), Client()

    async def body() -> None:
        await client.serve(CompactEventSourceResponse(source(), ping=15))

    run(body)
    assert client.sent[0]["type"] == "http.response.start"
    assert [b.split(b"\r\n")[1] for b in client.bodies[:2]] == [b"data: event 0", b"data: event 1"]
    assert client.sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert source.closed


def test_response_when_client_disconnects_then_generator_cleanup_runs_and_call_returns() -> None:
    source, client = Generator(1), Client()

    async def body() -> None:
        call = await client.open(CompactEventSourceResponse(source(), ping=15))
        client.disconnect()
        await call

    run(body)
    assert source.closed
    assert len(client.bodies) == 1  # no closing body after a disconnect


def test_response_when_idle_then_pings_at_the_interval() -> None:
    source, client = Generator(1), Client()

    async def body() -> None:
        call = asyncio.create_task(client.serve(CompactEventSourceResponse(source(), ping=0.05)))
        # Not a wait: the idle window itself, eight ping intervals long, in which to count pings.
        await asyncio.sleep(0.4)
        client.disconnect()
        await call

    run(body)
    pings = [b for b in client.bodies if b.startswith(b": ping")]
    assert len(pings) >= 3


def test_response_when_ping_send_times_out_then_send_timeout_raised_and_generator_closed() -> None:
    source, client = Generator(1), Client(block_pings=True)

    async def body() -> None:
        response = CompactEventSourceResponse(source(), ping=0.05, send_timeout=0.1)
        with pytest.raises(SendTimeoutError):
            await client.serve(response)

    run(body)
    assert source.closed


def test_response_when_client_stalls_with_pings_on_then_ping_deadline_ends_it() -> None:
    # Events' sends carry no deadline of their own; the next ping's does.
    source, client = Generator(5), Client(block_after=1)
    took: list[float] = []

    async def body() -> None:
        response = CompactEventSourceResponse(source(), ping=0.05, send_timeout=0.1)
        started = asyncio.get_running_loop().time()
        with pytest.raises(SendTimeoutError):
            await asyncio.wait_for(client.serve(response), 5)
        took.append(asyncio.get_running_loop().time() - started)

    run(body)
    assert took[0] < 1.0, "cut off within ping interval + send timeout, not by wait_for"
    assert source.closed


def test_response_when_pings_are_on_then_events_are_sent_without_a_deadline_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    deadlines: list[float] = []
    real = anyio.move_on_after

    def counting(delay: float, *args: Any, **kwargs: Any) -> anyio.CancelScope:
        deadlines.append(delay)
        return real(delay, *args, **kwargs)

    monkeypatch.setattr(anyio, "move_on_after", counting)
    source, client = Generator(50, then_wait=False), Client()

    async def body() -> None:
        await client.serve(CompactEventSourceResponse(source(), ping=15, send_timeout=30))

    run(body)
    assert sum(body.startswith(b"id:") for body in client.bodies) == 50
    assert 30 not in deadlines, "an event's send took the per-send deadline"


def test_response_when_client_stalls_with_pings_off_then_each_send_keeps_its_deadline() -> None:
    source, client = Generator(5), Client(block_after=1)

    async def body() -> None:
        response = CompactEventSourceResponse(source(), ping=0, send_timeout=0.1)
        with pytest.raises(SendTimeoutError):
            await asyncio.wait_for(client.serve(response), 5)

    run(body)
    assert source.closed


def test_response_when_generator_raises_then_error_propagates_and_watchers_stop() -> None:
    source, client = Generator(1, fail=True), Client()

    async def body() -> None:
        with pytest.raises(ValueError, match="generator failed"):
            await client.serve(CompactEventSourceResponse(source(), ping=15))

    run(body)
    assert source.closed


def test_response_when_server_shuts_down_then_shutdown_event_set_and_stream_ends_after_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(AppStatus, "should_exit", True)
    source, client = Generator(1), Client()
    shutdown = anyio.Event()
    ended_after: list[float] = []

    async def body() -> None:
        response = CompactEventSourceResponse(
            source(), ping=15, shutdown_event=shutdown, shutdown_grace_period=0.3
        )
        started = asyncio.get_running_loop().time()
        await client.serve(response)
        ended_after.append(asyncio.get_running_loop().time() - started)

    run(body)
    assert shutdown.is_set()
    assert source.closed  # the generator ignored the event, so the grace period cancelled it
    assert 0.25 <= ended_after[0] < 5


def test_response_when_head_then_headers_and_empty_body_without_starting_the_stream() -> None:
    source, client = Generator(1), Client()

    async def body() -> None:
        response = CompactEventSourceResponse(source(), ping=15)
        await client.serve(response, {**SCOPE, "method": "HEAD"})

    run(body)
    assert [m["type"] for m in client.sent] == ["http.response.start", "http.response.body"]
    assert client.bodies == [b""]
    assert not source.closed  # never iterated


def test_response_when_cancelled_from_outside_then_generator_closed_and_watchers_stop() -> None:
    source, client = Generator(1), Client()

    async def body() -> None:
        call = await client.open(CompactEventSourceResponse(source(), ping=0.05))
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call

    run(body)
    assert source.closed
