"""A private stack for one benchmark run (the same launchers the tests use), plus the small
helpers every benchmark shares: percentiles, /proc readings, and result files with table rows.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import boto3

from devtools import stack

RESULTS = Path(__file__).resolve().parent / "results"
BUCKET = "yousync-bench"
# UPLOAD_STAGING's values, in the order benchmarks report them.
STAGING_MODES = ("spool", "s3")


@dataclass
class Stack:
    api_url: str  # the API of the first staging mode asked for
    redis_url: str
    workdir: Path
    procs: dict[str, stack.Proc]
    s3_endpoint: str
    # One API per staging mode (UPLOAD_STAGING), all sharing Redis, S3, the spool and workers.
    apis: dict[str, stack.Proc]

    def url(self, staging: str) -> str:
        return f"http://127.0.0.1:{self.apis[staging].name.split(':')[1]}"


def staging_modes(text: str) -> tuple[str, ...]:
    """`--staging spool,s3` → ("spool", "s3"): the benchmarks' staging dimension."""
    modes = tuple(mode.strip() for mode in text.split(",") if mode.strip())
    unknown = [mode for mode in modes if mode not in STAGING_MODES]
    if unknown or not modes:
        raise ValueError(f"--staging takes a comma-separated subset of {STAGING_MODES}: {text!r}")
    return modes


def parse_staging(description: str | None) -> tuple[str, ...]:
    """The command line of an upload benchmark: `--staging`, default every mode."""
    parser = argparse.ArgumentParser(description=(description or "").split("\n\n")[0])
    parser.add_argument(
        "--staging",
        type=staging_modes,
        default=STAGING_MODES,
        help="UPLOAD_STAGING modes to measure, comma-separated (default: spool,s3)",
    )
    modes: tuple[str, ...] = parser.parse_args().staging
    return modes


@contextlib.contextmanager
def running_stack(
    *,
    workers: int = 1,
    analysis_min_seconds: float = 0.0,
    max_upload_mb: int = 200,
    extra_env: dict[str, str] | None = None,
    staging: Sequence[str] = ("spool",),
) -> Iterator[Stack]:
    """Redis, moto's S3, the analysis server, `workers` workers and one API per `staging`
    mode. Several APIs let a benchmark alternate between the modes round by round in one run,
    so the machine's drifting load lands on both alike. The first API's proc is `procs["api"]`,
    the others' `procs["api_<mode>"]`. Workers follow each job's own record (spool file or
    staged object), so they serve every API."""
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
            apis: dict[str, stack.Proc] = {}
            for index, mode in enumerate(staging):
                name = "api" if index == 0 else f"api_{mode}"
                procs[name] = apis[mode] = stack.api_proc(
                    {**env, "UPLOAD_STAGING": mode}, workdir
                ).start()
            yield Stack(
                api_url=f"http://127.0.0.1:{apis[staging[0]].name.split(':')[1]}",
                redis_url=env["REDIS_URL"],
                workdir=workdir,
                procs=procs,
                s3_endpoint=env["S3_ENDPOINT_URL"],
                apis=apis,
            )
        finally:
            for proc in reversed(procs.values()):
                proc.stop()


def bench_s3(bench: Stack) -> Any:
    """A boto3 client of the stack's moto S3 (the benchmark's own, to look and clean up)."""
    return boto3.client(
        "s3",
        endpoint_url=bench.s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    )


def clear_staged(client: Any) -> int:
    """Delete every staged upload (`incoming/`) and abort unfinished multipart uploads: moto
    keeps objects in its own memory and temp files, and thousands of MB of finished uploads
    would slow it down for the next phase. Returns how many objects were deleted."""
    deleted = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="incoming/"):
        keys = [{"Key": found["Key"]} for found in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=BUCKET, Delete={"Objects": keys})
            deleted += len(keys)
    listed = client.list_multipart_uploads(Bucket=BUCKET, Prefix="incoming/")
    for upload in listed.get("Uploads", []):
        client.abort_multipart_upload(Bucket=BUCKET, Key=upload["Key"], UploadId=upload["UploadId"])
    return deleted


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


RUN_ONE = ".venv/bin/python -m bench.<script>  (from the repository root)"


def command_for(script: str) -> str:
    """The script that reproduces a figure: `make bench` runs them all, `RUN_ONE` one."""
    return f"bench/{script}"


# --- /proc readings of child processes (Linux only, like the benchmarks) -----------------

_TICKS = os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> int:
    """Resident set size (VmRSS) of a process in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def thread_count(pid: int) -> int:
    """Threads of a process (a thread pool's stacks are part of its memory)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise RuntimeError(f"no Threads for pid {pid}")


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds a process has used so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces
    return int(fields[11]) / _TICKS, int(fields[12]) / _TICKS


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    return sum(cpu_split(pid))


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _process_table() -> dict[int, tuple[int, float]]:
    """pid → (parent pid, CPU seconds used so far) for every process on the machine."""
    table: dict[int, tuple[int, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue  # it ended meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()
        table[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICKS)
    return table


def _descendants(root: int, *tables: dict[int, tuple[int, float]]) -> set[int]:
    children: dict[int, set[int]] = {}
    for table in tables:
        for pid, (ppid, _) in table.items():
            children.setdefault(ppid, set()).add(pid)
    found, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


class ForeignLoad:
    """CPU used meanwhile by processes that are neither this benchmark nor its children.

    Why: this machine is shared (other sessions run test suites on the same two cores), and
    such load would show up as our latency. Every result records it: near 0 means a clean
    measurement. Counted per process, so kernel time spent on our own loopback traffic (which
    /proc/stat books as softirq, not to any process) is not mistaken for someone else's."""

    def __init__(self) -> None:
        self._start = _process_table()
        self._started = time.perf_counter()

    def cores(self) -> float:
        end = _process_table()
        seconds = time.perf_counter() - self._started
        ours = _descendants(os.getpid(), self._start, end)
        used = {
            pid: cpu - self._start.get(pid, (0, 0.0))[1]
            for pid, (_, cpu) in end.items()
            if pid not in ours
        }
        self.top = sorted(used.items(), key=lambda item: -item[1])[:5]
        return round(max(sum(used.values()), 0.0) / max(seconds, 1e-6), 2)


def wait_for_quiet(*, threshold: float = 0.2, timeout: float = 900.0) -> float:
    """Wait (bounded) until nothing else keeps this machine busy; returns the foreign load
    last measured (recorded in the result, see ForeignLoad)."""
    deadline = time.monotonic() + timeout
    while True:
        probe = ForeignLoad()
        time.sleep(3.0)
        busy = probe.cores()
        if busy <= threshold or time.monotonic() >= deadline:
            return busy
        print(f"waiting for a quiet machine ({busy:.2f} cores busy elsewhere)", flush=True)
        time.sleep(5.0)


def raise_fd_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit; children inherit it.
    Thousands of sockets need it on both ends. Returns the new soft limit."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard
