"""Ask the kernel to start writing a range of a file to disk now, without waiting for it.

Why: the API fsyncs an upload before answering 202. Left alone, Linux writes dirty pages back
only after ~30 s or under memory pressure, so that fsync would write the whole file while the
client waits. Starting write-back of each batch as soon as it is written lets the disk work while
the rest still arrives, and the final fsync waits only for the tail (CELERY_GUIDE §7, uploads).

sync_file_range(2) is Linux-only and not in Python's `os` module. Where it is missing this does
nothing and the fsync does all the work, as it would without this module.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

SYNC_FILE_RANGE_WRITE = 2  # start write-back of dirty pages; do not wait for it


def _load() -> Callable[[int, int, int, int], int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_sync_file_range = _load()


def start_writeback(fd: int, offset: int, length: int) -> bool:
    """Advisory: a refusal is not an error (the fsync before the 202 reports real ones).
    Returns whether the kernel took the request."""
    if _sync_file_range is None or length <= 0:
        return False
    return _sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE) == 0
