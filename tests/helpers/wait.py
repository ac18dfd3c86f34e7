"""Bounded waits on a condition, instead of sleeping a fixed time and hoping it happened.

`wait_until` is devtools.stack.poll: the predicate is polled until it returns something truthy
(returned) or the timeout passes. Unlike devtools.stack.wait_until, which waits for a service to
come up and so treats any error as "not ready yet", an exception raised by the predicate
propagates at once: in a test it is a failure, not a reason to wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from devtools import stack

T = TypeVar("T")


wait_until = stack.poll


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
