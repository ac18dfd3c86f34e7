"""Peak memory of the stack's processes, read from Linux /proc (VmHWM: the high-water mark of
resident memory, which a short peak between two samples cannot slip past)."""

from __future__ import annotations

from pathlib import Path

MB = 1024 * 1024


def _status_bytes(pid: int, field: str) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith(f"{field}:"))
    return int(line.split()[1]) * 1024


def peak_rss_bytes(pid: int) -> int:
    return _status_bytes(pid, "VmHWM")


def rss_bytes(pid: int) -> int:
    """Resident memory now (VmRSS): unlike the peak, it falls when memory is handed back."""
    return _status_bytes(pid, "VmRSS")


def children_peaks(pid: int) -> dict[int, int]:
    """Peak RSS of each direct child of `pid` (a Celery worker's prefork children)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return {int(child): peak_rss_bytes(int(child)) for child in children}


def largest_growth(before: dict[int, int], after: dict[int, int]) -> int:
    """The largest rise of a peak among processes present in both readings."""
    common = before.keys() & after.keys()
    assert common, "no process lived through both readings"
    return max(after[pid] - before[pid] for pid in common)
