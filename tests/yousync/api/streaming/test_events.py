"""The per-client mailbox the hub fills (yousync.api.streaming.events.Subscription), on its
own: order, the overflow rule that turns a slow reader's backlog into one RESYNC, and a
cancelled read that loses nothing. The hub with real Redis is tested in test_progress_stream.py."""

from __future__ import annotations

import asyncio

from tests.helpers.wait import wait_until_async
from yousync.api.streaming.events import RESYNC, SHUTDOWN, Notification, Subscription


def note(number: int) -> Notification:
    return Notification(
        job_id="job", token_id="token", id=f"1-{number}", token_event_id=f"2-{number}", fields={}
    )


def drain(sub: Subscription, count: int) -> list[object]:
    async def read() -> list[object]:
        return [await asyncio.wait_for(sub.get(), 1) for _ in range(count)]

    return asyncio.run(read())


async def parked(sub: Subscription) -> None:
    """Until a reader waits in `sub.get()` (on the future an offer resolves)."""
    await wait_until_async(lambda: sub._waiter is not None, within=1, what="the reader waiting")


def test_subscription_when_items_offered_then_read_in_order() -> None:
    sub = Subscription(limit=8)
    items = [note(n) for n in range(5)]
    for item in items:
        sub.offer(item)
    assert drain(sub, 5) == items


def test_subscription_when_backlog_overflows_then_one_resync_replaces_it() -> None:
    sub = Subscription(limit=3)
    for number in range(4):
        sub.offer(note(number))
    assert drain(sub, 1) == [RESYNC]
    assert sub.resyncs == 1
    later = note(9)
    sub.offer(later)
    assert drain(sub, 1) == [later]


def test_subscription_when_overflowing_item_is_shutdown_then_shutdown_is_kept() -> None:
    sub = Subscription(limit=2)
    sub.offer(note(1))
    sub.offer(note(2))
    sub.offer(SHUTDOWN)
    assert drain(sub, 1) == [SHUTDOWN]


def test_subscription_when_reader_waits_then_offer_wakes_it() -> None:
    item = note(2)

    async def scenario() -> object:
        sub = Subscription(limit=4)
        reader = asyncio.create_task(sub.get())
        await parked(sub)
        assert not reader.done()
        sub.offer(item)
        return await asyncio.wait_for(reader, 1)

    assert asyncio.run(scenario()) is item


def test_subscription_when_read_cancelled_then_next_read_gets_the_item() -> None:
    async def scenario() -> object:
        sub = Subscription(limit=4)
        reader = asyncio.create_task(sub.get())
        await parked(sub)
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        item = note(3)
        sub.offer(item)
        return await asyncio.wait_for(sub.get(), 1)

    assert asyncio.run(scenario()).id == "1-3"
