"""Per-process bounds that keep one client from taking the process: concurrent uploads per
client. (Open SSE streams are bounded through the hub's client count.)"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator


class TooManyUploads(Exception):
    pass


class TooManyStreams(Exception):
    pass


class UploadSlots:
    def __init__(self, per_client: int) -> None:
        self._per_client = per_client
        self._active: Counter[str] = Counter()

    @contextlib.contextmanager
    def hold(self, client: str) -> Iterator[None]:
        if self._active[client] >= self._per_client:
            raise TooManyUploads(client)
        self._active[client] += 1
        try:
            yield
        finally:
            self._active[client] -= 1
            if not self._active[client]:
                del self._active[client]
