"""Bounded waits on a condition, instead of sleeping a fixed time and hoping it happened.

The predicate is polled every `interval` seconds until it returns something truthy (which is
returned) or `timeout` passes (TimeoutError naming `what`). Unlike devtools.stack.wait_until,
which waits for a service to come up and so treats any error as "not ready yet", an exception
raised by the predicate propagates at once: in a test it is a failure, not a reason to wait.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T], *, timeout: float, what: str, interval: float = 0.05
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not within {timeout:g}s (last: {value!r})")
        time.sleep(interval)  # the poll interval


async def wait_until_async(
    predicate: Callable[[], T], *, within: float, what: str, interval: float = 0.01
) -> T:
    """The same inside an event loop (other tasks run while it waits), bounded by
    asyncio.timeout: `within` seconds."""
    try:
        async with asyncio.timeout(within):
            while True:
                value = predicate()
                if value:
                    return value
                await asyncio.sleep(interval)  # the poll interval
    except TimeoutError:
        raise TimeoutError(f"{what}: not within {within:g}s") from None
