"""One /metrics scrape for every API process of a host (`uvicorn main:app --workers N`).

The N processes share one port, and Prometheus' scrape reaches whichever process accepts it.
With in-memory metrics each scrape would report one random process, and a counter's samples
would jump between processes. prometheus-client's multiprocess mode fixes that: with
`PROMETHEUS_MULTIPROC_DIR` in its environment, every metric value of a process lives in a small
mmap'd file of that directory, named by its pid (`counter_<pid>.db`, `gauge_livesum_<pid>.db`,
…), and the scraped process merges all the files: counters and histograms summed over every
process that ever wrote them since the directory was emptied (so a process replaced by a
rolling restart does not make them go backwards), `live*` gauges over the processes alive.

What this module adds to the library:

* `serving`: a process announces itself (`yousync_api_processes` 1, its live gauges reset in
  case its pid is one an earlier process used) and, leaving cleanly, removes its live-gauge
  files (`mark_process_dead`), so SSE clients it no longer holds stop counting at once.
* `reap`: at every scrape, the live-gauge files of pids that no longer run (a process
  SIGKILLed, or killed by uvicorn's supervisor as hung) are removed too.
* `HostCollector`: the merged files, plus memory and descriptors summed over the live
  processes (`/proc`), which replace the scraped process's own `process_*` series.

The directory must be empty when the supervisor starts (stale files would count old values;
a reused pid would inherit them): systemd's `RuntimeDirectory=` does it for the API's unit,
`prepare_dir` for `make prod-local` and the tests. Nothing here empties it in the API itself:
a process starting next to live siblings cannot tell their files from stale ones.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import cast

from prometheus_client import multiprocess as _library
from prometheus_client import values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.platform_collector import PLATFORM_COLLECTOR
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

# The library's multiprocess functions carry no annotations; these are their signatures.
_mark_process_dead = cast("Callable[[int, str], None]", _library.mark_process_dead)
_merged_files = cast("Callable[..., Collector]", _library.MultiProcessCollector)

# The files of `live*` gauges: removed when their process ends.
_LIVE_FILE = re.compile(r"^gauge_live[a-z]+_(\d+)\.db$")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def enabled() -> bool:
    """Whether prometheus-client chose its mmap'd values, which it decides once, at import,
    from `PROMETHEUS_MULTIPROC_DIR` in the process environment."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


def check(directory: Path | None) -> None:
    """Refuse to serve when the settings and prometheus-client disagree: a directory named
    only in `.env` (the settings read it, the library does not), or an empty variable (the
    library writes its files into the working directory)."""
    if directory is not None and not enabled():
        raise RuntimeError(
            f"PROMETHEUS_MULTIPROC_DIR={directory} is in the settings but not in the process "
            "environment: prometheus-client reads it from the environment only (set it in the "
            "API's unit or Procfile line, not in .env)"
        )
    if directory is None and enabled():
        raise RuntimeError("PROMETHEUS_MULTIPROC_DIR is set but empty: set a directory or unset it")
    if directory is not None and not directory.is_dir():
        raise RuntimeError(f"PROMETHEUS_MULTIPROC_DIR={directory} is not a directory")


def prepare_dir(directory: Path) -> None:
    """What a supervisor does before it starts the API's processes: an empty directory."""
    directory.mkdir(parents=True, exist_ok=True)
    for path in directory.glob("*.db"):
        path.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def live_pids(directory: Path) -> list[int]:
    """Pids with live-gauge files: every API process that started and has not left."""
    pids = set()
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            match = _LIVE_FILE.match(entry.name)
            if match:
                pids.add(int(match.group(1)))
    return sorted(pids)


def reap(directory: Path) -> list[int]:
    """Remove the live-gauge files of processes that ended without leaving (SIGKILL, or the
    supervisor killing a hung process); returns the live pids. Their counters stay: they
    happened."""
    alive = []
    for pid in live_pids(directory):
        if _running(pid):
            alive.append(pid)
        else:
            log.info("metrics: process %d ended without leaving; its live gauges dropped", pid)
            _mark_process_dead(pid, str(directory))
    return alive


def _proc_figures(pid: int) -> tuple[float, float, float] | None:
    """Resident and virtual memory and open descriptors of one process, from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None  # ended meanwhile, or no /proc
    fields = stat.rsplit(b")", 1)[1].split()
    return float(fields[21]) * _PAGE_SIZE, float(fields[20]), float(fds)


class HostCollector(Collector):
    """The scrape's view of every API process on this host (see the module's docstring)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def collect(self) -> Iterator[Metric]:
        pids = reap(self.directory)
        yield from _merged_files(None, path=str(self.directory)).collect()
        yield from PLATFORM_COLLECTOR.collect()
        yield from _process_families(pids)


def _process_families(pids: Iterable[int]) -> Iterator[Metric]:
    rss = vms = fds = 0.0
    for pid in pids:
        figures = _proc_figures(pid)
        if figures is not None:
            rss, vms, fds = rss + figures[0], vms + figures[1], fds + figures[2]
    yield GaugeMetricFamily(
        "yousync_api_resident_memory_bytes",
        "Resident memory of this host's live API processes, summed.",
        value=rss,
    )
    yield GaugeMetricFamily(
        "yousync_api_virtual_memory_bytes",
        "Virtual memory of this host's live API processes, summed.",
        value=vms,
    )
    yield GaugeMetricFamily(
        "yousync_api_open_fds",
        "Open file descriptors of this host's live API processes, summed (one per SSE client).",
        value=fds,
    )


class SingleProcessCollector(Collector):
    """The same three host series for one process without multiprocess mode (as the scrape
    reaches the only process there is, they describe the host's API too)."""

    def collect(self) -> Iterator[Metric]:
        yield from _process_families([os.getpid()])


def leave(directory: Path) -> None:
    """This process ends cleanly: its live gauges stop counting now."""
    _mark_process_dead(os.getpid(), str(directory))
