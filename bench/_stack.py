"""A private stack for one benchmark run (the same launchers the tests use), plus the small
helpers every benchmark shares: percentiles, /proc readings, and result files with table rows.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from devtools import stack

RESULTS = Path(__file__).resolve().parent / "results"
BUCKET = "yousync-bench"


@dataclass
class Stack:
    api_url: str
    redis_url: str
    workdir: Path
    procs: dict[str, stack.Proc]


@contextlib.contextmanager
def running_stack(
    *,
    workers: int = 1,
    analysis_min_seconds: float = 0.0,
    max_upload_mb: int = 200,
    extra_env: dict[str, str] | None = None,
) -> Iterator[Stack]:
    with tempfile.TemporaryDirectory(prefix="yousync-bench-") as tmp:
        workdir = Path(tmp)
        procs: dict[str, stack.Proc] = {}
        try:
            procs["redis"] = stack.redis_proc(workdir).start()
            redis_port = procs["redis"].name.split(":")[1]
            procs["s3"] = stack.s3_proc(workdir, BUCKET).start()
            analysis_port = stack.free_port()
            spool = workdir / "spool"
            spool.mkdir()
            env = {
                "ENVIRONMENT": "test",
                "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
                "S3_ENDPOINT_URL": f"http://127.0.0.1:{procs['s3'].name.split(':')[1]}",
                "S3_BUCKET": BUCKET,
                "AWS_ACCESS_KEY_ID": "bench",
                "AWS_SECRET_ACCESS_KEY": "bench",
                "SPOOL_DIR": str(spool),
                "ANALYSIS_SERVER_URL": f"http://127.0.0.1:{analysis_port}",
                "ANALYSIS_MIN_SECONDS": str(analysis_min_seconds),
                "MAX_UPLOAD_MB": str(max_upload_mb),
                "AUDIO_STORE_FORMAT": "flac",
                **(extra_env or {}),
            }
            procs["analysis"] = stack.analysis_proc(env, workdir, port=analysis_port).start()
            for index in range(workers):
                procs[f"worker{index}"] = stack.worker_proc(
                    env, workdir, name=f"w{index}", concurrency=1
                ).start()
            procs["api"] = stack.api_proc(env, workdir).start()
            yield Stack(
                api_url=f"http://127.0.0.1:{procs['api'].name.split(':')[1]}",
                redis_url=env["REDIS_URL"],
                workdir=workdir,
                procs=procs,
            )
        finally:
            for proc in reversed(procs.values()):
                proc.stop()


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


@dataclass(frozen=True)
class Row:
    """One line of bench/results/summary.md (and of CELERY_GUIDE.md §6): a measured figure,
    the target the benchmark issue set for it (empty when it has none) and whether it was met."""

    figure: str
    value: str
    target: str = ""
    met: bool | None = None
    command: str = ""


def write_result(name: str, figures: dict[str, object], rows: list[Row] | None = None) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {
        "benchmark": name,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "figures": figures,
        "rows": [asdict(row) for row in rows or []],
    }
    path.write_text(json.dumps(payload, indent=2))
    return path


def command_for(script: str) -> str:
    """How to reproduce one benchmark alone (what `make bench` runs for every script)."""
    return f"PYTHONPATH=.:back-end:analysis-server .venv/bin/python bench/{script}"


# --- /proc readings of child processes (Linux only, like the benchmarks) -----------------

_TICKS = os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> int:
    """Resident set size (VmRSS) of a process in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces
    return (int(fields[11]) + int(fields[12])) / _TICKS


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def system_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores)."""
    return _cpu_times()[0] / _TICKS


def system_busy_cores(seconds: float = 2.0) -> float:
    """How many cores the whole machine kept busy over the next `seconds`."""
    busy0, total0 = _cpu_times()
    time.sleep(seconds)
    busy1, total1 = _cpu_times()
    return (busy1 - busy0) / max(total1 - total0, 1) * (os.cpu_count() or 1)


def wait_for_quiet(*, threshold: float = 0.3, timeout: float = 900.0) -> float:
    """Wait (bounded) until nothing else keeps this machine busy, and return the background
    load finally measured. On a shared 2-core machine a test suite running alongside would
    otherwise show up as our latency; the figure goes into every result file so a reader can
    tell a quiet run from a disturbed one."""
    deadline = time.monotonic() + timeout
    busy = system_busy_cores()
    while busy > threshold and time.monotonic() < deadline:
        print(f"waiting for a quiet machine ({busy:.2f} cores busy elsewhere)", flush=True)
        time.sleep(10)
        busy = system_busy_cores()
    return round(busy, 2)


def raise_fd_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit; children inherit it.
    Thousands of sockets need it on both ends. Returns the new soft limit."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard
