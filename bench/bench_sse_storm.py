"""SSE storm: every progress stream opened at once — against one API process, against the
host's API processes, and twenty times in a row against one process to see whether anything
stays behind.

Why this shape: bench_sse_fanout opens its clients 500 at a time, which is how a benchmark
keeps the kernel's listen backlog out of the picture, not how clients arrive in production:
after a deploy or a network blip every browser's EventSource reconnects within the same second.
At stream start the API reads the job's Redis Stream before it can answer 200, so a storm
queues thousands of those reads on the API's bounded Redis pool, and a request that waits too
long is answered 503. This benchmark measures what a storm gets, and whether the streams that
were held then work as well as after a gentle start (every event, exactly once, in time):

  storm-1   --storm clients (1,000) at once on ONE API process (uvicorn, as bench_sse_fanout
            starts it)                      → non-200 answers by status, connect failures,
                                              held p50/p99/max
            then the busy load (--rate events/s over --jobs jobs, clients spread evenly, for
            --load-seconds)                 → delivery latency p50/p99; per client: each event
                                              written to its job after it was held, exactly once
  storm-N   --storm-hosts clients (10,000) at once on --processes API processes (uvicorn's
            own supervisor: `uvicorn main:app --workers N`, see `host_api`)
                                            → the same figures, plus how the connections split
                                              over the processes and each process's RSS
  restart   --restart-clients (4,000) held on the host's processes, reconnecting like browsers
            (after their `retry:`, with Last-Event-ID); the busy load runs --restart-load-seconds
            and after --restart-after seconds uvicorn's supervisor gets SIGHUP (it replaces each
            process with a new one: a rolling deploy)
                                            → reconnects, answered 200 / refused, held at the
                                              end, loss → 200 time, events lost / duplicated
                                              across the restart
  soak      --cycles (20) × [--soak-clients (2,000) at once on one API process, --soak-events
            events per job, all leave, wait until the API has closed their sockets]
                                            → after every cycle the API's RSS, open fds,
                                              asyncio tasks and gc-tracked objects; target
                                              RSS after the last cycle ≤ 1.05 × after the first

Definitions (from the issue): busy = bench_sse_fanout's load (1,000 jobs × 1 event/s, clients
spread evenly over the jobs); held = from the connect attempt to the first `data:` line;
storm = every connection opened at once, no batching.

How it measures:
* Clients are bench/_sse_clients.py's raw asyncio protocols in child processes (ClientFleet);
  a storm hands each client process its share of the paths as one batch, so every process opens
  all of its connections at once. Each connection gets --connect-timeout for its TCP connect
  and again for its first event: a SYN the full backlog dropped is retried by the kernel after
  1, 3, 7 s…, which is part of what a storm costs and so part of "held".
* Exactly once: each connection keeps the last event id it saw (ids are Redis Stream ids, in
  order within a job), counts an event whose id is not above it as a duplicate, and counts the
  others written during the load (their write time is in the event). A connection held before
  the load started must count exactly the events the writer wrote to its job; fewer is "lost"
  (a stream that closed mid-load loses the rest), duplicates are counted over the stream's whole
  life, initial snapshot included.
* Latency is bench_sse_fanout's: receipt time in the client process minus the write time the
  writer put into the event.
* Connections per API process: the established TCP sockets on the API port that each worker
  holds, from /proc/<pid>/fd socket inodes matched against /proc/net/tcp (no psutil here).
* Soak readings come from bench/_gc_probe.py's SIGUSR1 snapshot of the API (tracked objects
  before and after a forced full collection, and the asyncio tasks of its loop), taken only
  after the cycle's clients left and the API's fd count is back at its idle level.
* Other processes' CPU during each phase is recorded (`foreign_cpu_cores`): the machine is
  shared, and each phase first waits (bounded) for it to be quiet.
* Every phase is bounded (per-connection limits, client-process command timeouts, drain limit);
  a phase that fails records its error and the next phase runs on fresh processes.

Run: `make bench`, or alone from the repository root: .venv/bin/python -m bench.bench_sse_storm
[--storm 1000] [--storm-hosts 10000] [--processes 2] [--soak-clients 2000] [--cycles 20]
(several minutes at full size; every phase is bounded). A smoke run: --storm 200
--storm-hosts 400 --soak-clients 200 --cycles 3 --load-seconds 3 --rate 400.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench._gc_probe import read_pauses, request_snapshot
from bench._jobs import create_jobs, sync_store
from bench._stack import (
    ForeignLoad,
    Row,
    command_for,
    cpu_seconds,
    open_fds,
    percentile,
    raise_fd_limit,
    rss_kb,
    wait_for_quiet,
    write_result,
)
from bench.bench_sse_fanout import (
    API_APP,
    HOST,
    TOKEN,
    ClientFleet,
    latency_figures,
    poke,
    uvicorn_server,
    write_load,
)
from bench.summary import write_summary
from devtools import stack
from devtools.connections import connections_per_pid, serving_processes
from yousync.core.jobs import JobStore

SCRIPT = Path(__file__).name
PATH_PREFIX = "/tokens/analysis-progress/"
# Sockets a client process needs besides its connections (pipes, the loop, imports); a storm
# share larger than the fd limit minus this fails with EMFILE instead of measuring the server.
CLIENT_FD_RESERVE = 200
WARM_UP = 20  # connections opened and closed first: lazy imports and first-request caches
READY_TIMEOUT = 60.0  # every worker of a multi-process API serving
LEAVE_TIMEOUT = 60.0  # the API closing the sockets of clients that left
RSS_TARGET_RATIO = 1.05


# --- the API under test -------------------------------------------------------------------


def api_env(redis_url: str, spool: Path) -> dict[str, str]:
    """bench_sse_fanout's environment: real Redis; S3 and the analysis server point nowhere
    (streams never call them); a stall watcher that stays quiet for the benchmark's idle jobs."""
    return {
        "ENVIRONMENT": "test",
        "REDIS_URL": redis_url,
        "S3_ENDPOINT_URL": "http://127.0.0.1:9",
        "S3_BUCKET": "bench-unused",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "ANALYSIS_SERVER_URL": "http://127.0.0.1:9",
        "SPOOL_DIR": str(spool),
        "STALL_SECONDS": "3600",
        **stack.API_ENV,  # launched as the product launches it (PYTHONMALLOC=malloc)
    }


def host_api(processes: int, env: dict[str, str], workdir: Path, port: int) -> stack.Proc:
    """The product's API as this host runs it with `processes` processes on one port. For now
    uvicorn's own supervisor with the fan-out benchmark's flags; the one place to swap in the
    product's multi-process launcher. Its process group holds every process it starts (Proc
    stops the group)."""
    proc = stack.uvicorn_proc(
        "api-host",
        API_APP,
        env,
        workdir,
        stack.REPO_ROOT,
        port,
        (*stack.API_UVICORN_ARGS, "--workers", str(processes)),
    )
    try:
        return proc.start()
    except BaseException:
        proc.kill()  # Proc.start leaves a process that never answered running
        raise


def serving_workers(supervisor: int, processes: int, port: int, redis_port: int) -> list[int]:
    """The worker pids once all `processes` have finished their startup (devtools.connections)."""
    return stack.poll(
        lambda: serving_processes(supervisor, processes, port, redis_port),
        timeout=READY_TIMEOUT,
        what=f"{processes} API workers",
        interval=0.5,
    )


@contextlib.contextmanager
def fleet_for(clients: int, args: argparse.Namespace, fd_limit: int) -> Iterator[ClientFleet]:
    """Enough client processes that each one's share of a storm fits its fd limit; a fresh
    fleet per phase, so a phase that timed out leaves no unanswered command behind."""
    per_process = max(1, min(args.clients_per_proc, fd_limit - CLIENT_FD_RESERVE))
    fleet = ClientFleet(max(1, math.ceil(clients / per_process)))
    try:
        yield fleet
    finally:
        fleet.stop()


# --- one storm and what follows it --------------------------------------------------------


def storm(fleet: ClientFleet, port: int, paths: list[str], limit: float) -> dict[str, Any]:
    """Open every path at once (one batch per client process) and sort what came back."""
    connected = fleet.connect(port, paths, batch=len(paths), limit=limit)
    held_ms = [seconds * 1000 for seconds in connected["first_event_seconds"]]
    failures: dict[str, int] = connected["failures"]
    non_200 = {k.removeprefix("http_"): v for k, v in failures.items() if k.startswith("http_")}
    refused = {
        k: v for k, v in failures.items() if k.startswith(("connect_", "closed_before_response_"))
    }
    no_first_event = failures.get("no_first_event", 0)
    # Held streams the server closed before the storm ended count as held once (`lost`).
    reached = connected["held"] + connected["lost"]
    return {
        "clients": len(paths),
        "held": connected["held"],
        "closed_after_held": connected["lost"],
        "non_200": non_200,
        "non_200_total": sum(non_200.values()),
        "connect_failures": refused,
        "connect_failures_total": sum(refused.values()),
        "no_first_event": no_first_event,
        # A 200 whose stream ended before its first event: neither held nor a failure above.
        "unaccounted": len(paths)
        - reached
        - sum(non_200.values())
        - sum(refused.values())
        - no_first_event,
        "seconds": round(connected["seconds"], 2),
        "held_ms_p50": round(percentile(held_ms, 50), 1) if held_ms else None,
        "held_ms_p99": round(percentile(held_ms, 99), 1) if held_ms else None,
        "held_ms_max": round(max(held_ms), 1) if held_ms else None,
    }


def _job(path: str) -> str:
    return path.rsplit("/", 1)[1]


def tally(fleet: ClientFleet) -> list[tuple[str, float, int, int, bool]]:
    return [row for reply in fleet.call("tally") for row in reply]


def exactly_once(
    rows: list[tuple[str, float, int, int, bool]], expected: Counter[str], since: float
) -> dict[str, Any]:
    """Per connection held before `since`: the events written to its job from then on, each
    received once. Duplicates are counted on every connection."""
    followed = [row for row in rows if row[1] <= since]
    lost = [max(0, expected[_job(path)] - events) for path, _, events, _, _ in followed]
    return {
        "streams_checked": len(followed),
        "events_expected": sum(expected[_job(row[0])] for row in followed),
        "events_received": sum(row[2] for row in followed),
        "events_lost": sum(lost),
        "events_duplicated": sum(row[3] for row in rows),
        "events_unexpected": sum(
            max(0, events - expected[_job(path)]) for path, _, events, _, _ in followed
        ),
        "streams_with_loss": sum(1 for value in lost if value),
        "streams_with_duplicates": sum(1 for row in rows if row[3]),
        "streams_closed_by_server": sum(1 for row in followed if not row[4]),
        "held_after_load_started": sum(1 for row in rows if since < row[1] < math.inf),
    }


def follow(
    fleet: ClientFleet,
    store: JobStore,
    job_ids: list[str],
    *,
    rate: float,
    seconds: float,
    drain_limit: float,
) -> dict[str, Any]:
    """Write `rate` events/s for `seconds` over the jobs (shuffled order, round-robin), wait
    for the deliveries, and check latency and exactly-once per connection."""
    order = random.Random(len(job_ids)).sample(job_ids, len(job_ids))
    total = int(rate * seconds)
    expected = Counter(order[index % len(order)] for index in range(total))
    started = time.time()
    fleet.call("record", started)
    held = [row for row in tally(fleet) if row[1] <= started]
    deliveries = sum(expected[_job(row[0])] for row in held)
    foreign = ForeignLoad()
    written = write_load(store, order, {}, rate=rate, seconds=seconds)
    foreign_cores = foreign.cores()
    drain_seconds = fleet.drain(deliveries, limit=drain_limit)
    receipts, still_held = fleet.receipts()
    return {
        "writer": written,
        "foreign_cpu_cores": foreign_cores,
        "drain_seconds": drain_seconds,
        "latency": latency_figures(receipts, deliveries),
        "held_at_end": still_held,
        "exactly_once": exactly_once(tally(fleet), expected, started),
    }


def finish_jobs(store: JobStore, job_ids: list[str]) -> None:
    """Terminal events once nobody follows them, so no API's stall watcher writes later."""
    for job_id in job_ids:
        store.update(job_id, TOKEN, status="completed", progress=100, stage="done", message="-")


def new_paths(redis_url: str, clients: int, jobs: int) -> tuple[list[str], list[str]]:
    """Fresh jobs (at most `jobs`) and one path per client, spread evenly over them."""
    per_job = max(1, clients // jobs)
    job_ids = create_jobs(redis_url, TOKEN, max(1, clients // per_job))
    return job_ids, [f"{PATH_PREFIX}{job_ids[i % len(job_ids)]}" for i in range(clients)]


def warm_up(fleet: ClientFleet, port: int, store: JobStore, redis_url: str) -> None:
    """A few streams opened and closed first: lazy imports and first-request caches are not
    what a storm measures."""
    job_ids, paths = new_paths(redis_url, WARM_UP, WARM_UP)
    fleet.connect(port, paths, WARM_UP)
    fleet.close()
    finish_jobs(store, job_ids)
    time.sleep(1.0)


SETTLE_TIMEOUT = 60.0
LEAVE_SETTLE = 6.0  # 10,000 streams' teardown, then the idle rebase (see IDLE_REBASE_WAIT)
IDLE_REBASE_WAIT = 2.5  # yousync/api/gc_policy.py: GcPolicy.idle_seconds + a tick + its pause


def wait_for_leave(pids: list[int], port: int, timeout: float) -> int:
    """Wait (bounded) until the API processes hold no client connection on `port` any more;
    returns how many they still held. Their fd count is no test: the Redis pool may have grown
    during the storm and keeps its connections."""
    deadline = time.monotonic() + timeout
    while True:
        held = sum(connections_per_pid(pids, port).values())
        if held == 0 or time.monotonic() >= deadline:
            return held
        time.sleep(0.2)


def run_restart(
    *,
    port: int,
    supervisor: int,
    fleet: ClientFleet,
    store: JobStore,
    redis_url: str,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """A deploy under load: every client held and reconnecting like a browser, the busy load
    running, and uvicorn's supervisor told (SIGHUP) to replace each API process with a new
    one. Each old process ends its streams with the shutdown comment; every client must come
    back (a 200, with `Last-Event-ID`) and have every event of its job exactly once."""
    clients = args.restart_clients
    job_ids, paths = new_paths(redis_url, clients, args.jobs)
    warm_up(fleet, port, store, redis_url)
    connected = storm(fleet, port, paths, args.connect_timeout)
    fleet.call("reconnect", True)
    timer = threading.Timer(args.restart_after, os.kill, (supervisor, signal.SIGHUP))
    timer.start()
    try:
        load = follow(
            fleet,
            store,
            job_ids,
            rate=args.rate,
            seconds=args.restart_load_seconds,
            drain_limit=args.drain_limit,
        )
    finally:
        timer.cancel()
    replies = fleet.call("reconnects")
    seconds = [value for reply in replies for value in reply["seconds"]]
    failures: Counter[str] = Counter()
    for reply in replies:
        failures.update(reply["failures"])
    figures = {
        "clients": clients,
        "storm": connected,
        "load": load,
        "reconnects": sum(reply["attempts"] for reply in replies),
        "reconnected": len(seconds),
        "reconnect_failures": dict(failures),
        "reconnect_ms_p50": round(percentile([v * 1000 for v in seconds], 50), 0)
        if seconds
        else None,
        "reconnect_ms_max": round(max(seconds) * 1000) if seconds else None,
        "held_at_end": sum(reply["held"] for reply in replies),
    }
    print(f"[restart] {figures['reconnects']} reconnects, failures {dict(failures)}", flush=True)
    fleet.close()
    finish_jobs(store, job_ids)
    return figures


def pause_summary(pauses: list[tuple[float, int, float]]) -> dict[str, Any]:
    """The API's collections of at least bench/_gc_probe.PAUSE_MS during the load, all of its
    processes together: how many, the longest, and per generation."""
    by_generation: dict[str, list[float]] = {}
    for _, generation, ms in pauses:
        by_generation.setdefault(str(generation), []).append(ms)
    return {
        "count": len(pauses),
        "max_ms": round(max((ms for _, _, ms in pauses), default=0.0), 1),
        "by_generation": {
            gen: {"count": len(values), "max_ms": round(max(values), 1)}
            for gen, values in sorted(by_generation.items())
        },
    }


def run_storm(
    *,
    label: str,
    port: int,
    workers: list[int],
    supervisor: int | None,
    clients: int,
    fleet: ClientFleet,
    store: JobStore,
    redis_url: str,
    args: argparse.Namespace,
    gc_log: Path,
) -> dict[str, Any]:
    """One storm of `clients` on the API at `port` (served by `workers`), then the busy load."""
    job_ids, paths = new_paths(redis_url, clients, args.jobs)
    figures: dict[str, Any] = {
        "clients": clients,
        "jobs": len(job_ids),
        "clients_per_job": clients // len(job_ids),
        "api_processes": len(workers),
        "client_processes": len(fleet.pids),
    }
    warm_up(fleet, port, store, redis_url)
    figures["rss_before_kb"] = {str(pid): rss_kb(pid) for pid in workers}
    print(f"[{label}] storm: {clients} clients at once on {len(workers)} process(es)", flush=True)
    foreign = ForeignLoad()
    figures["storm"] = storm(fleet, port, paths, args.connect_timeout)
    figures["storm"]["foreign_cpu_cores"] = foreign.cores()
    print(f"[{label}] {figures['storm']}", flush=True)
    time.sleep(1.0)
    figures["rss_held_kb"] = {str(pid): rss_kb(pid) for pid in workers}
    if supervisor is not None:
        figures["rss_held_kb"]["supervisor"] = rss_kb(supervisor)
    figures["fds_held"] = {str(pid): open_fds(pid) for pid in workers}
    figures["connections_per_process"] = {
        str(pid): count for pid, count in connections_per_pid(workers, port).items()
    }
    print(f"[{label}] connections per process {figures['connections_per_process']}", flush=True)

    load_started = time.time()
    cpu_before = {pid: cpu_seconds(pid) for pid in [*workers, *fleet.pids]}
    figures["load"] = follow(
        fleet,
        store,
        job_ids,
        rate=args.rate,
        seconds=args.load_seconds,
        drain_limit=args.drain_limit,
    )
    elapsed = time.time() - load_started
    used = {pid: cpu_seconds(pid) - before for pid, before in cpu_before.items()}
    # Where the two cores went during the load and its drain: the API's processes, and the
    # client processes that share the cores with them.
    figures["load"]["cpu_cores"] = {
        "api": round(sum(used[pid] for pid in workers) / elapsed, 2),
        "clients": round(sum(used[pid] for pid in fleet.pids) / elapsed, 2),
    }
    figures["load"]["gc_pauses"] = pause_summary(read_pauses(gc_log, load_started, time.time()))
    print(f"[{label}] API gc pauses during the load {figures['load']['gc_pauses']}", flush=True)
    print(f"[{label}] latency {figures['load']['latency']}", flush=True)
    print(f"[{label}] exactly once {figures['load']['exactly_once']}", flush=True)
    fleet.close()
    figures["connections_after_leave"] = wait_for_leave(workers, port, LEAVE_TIMEOUT)
    finish_jobs(store, job_ids)
    # Memory that comes back: the API's policy rebases (one full collection, malloc_trim) on
    # its next tick once its streams have ended.
    time.sleep(max(args.settle, LEAVE_SETTLE))
    figures["rss_after_leave_kb"] = {str(pid): rss_kb(pid) for pid in workers}
    return figures


def run_soak(
    *,
    server: stack.Proc,
    gc_log: Path,
    base_url: str,
    port: int,
    fleet: ClientFleet,
    store: JobStore,
    redis_url: str,
    args: argparse.Namespace,
) -> dict[str, Any]:
    pid = server.pid
    warm_up(fleet, port, store, redis_url)
    idle_fds = open_fds(pid)

    def settled() -> None:
        """Until the API has finished tearing down the streams whose sockets closed: its task
        count is back to the idle one (each stream's tasks end a little after its socket; 5,000
        take a few seconds). Read earlier, RSS would count live streams as retained memory."""
        idle = figures["before"]["tasks"] if "before" in figures else None
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while idle is not None and time.monotonic() < deadline:
            if request_snapshot(pid, gc_log, lambda: poke(base_url))["tasks"] <= idle + 1:
                # The GC policy rebases (and trims) once the process has been idle for 1 s.
                time.sleep(IDLE_REBASE_WAIT)
                break
            time.sleep(1.0)

    def reading() -> dict[str, Any]:
        settled()
        # RSS and fds first: the snapshot's own lists of every object would count otherwise.
        rss, fds = rss_kb(pid), open_fds(pid)
        snapshot = request_snapshot(pid, gc_log, lambda: poke(base_url))
        return {
            "rss_kb": rss,
            "fds": fds,
            "tasks": snapshot.get("tasks"),
            "gc_objects": snapshot["objects"],
            "gc_objects_after_full_gc": snapshot.get("objects_after_gc"),
            "gc_frozen": snapshot.get("frozen"),
            "full_gc_ms": snapshot["full_gc_ms"],
        }

    figures: dict[str, Any] = {}
    figures = {
        "clients": args.soak_clients,
        "cycles": args.cycles,
        "events_per_job": args.soak_events,
        "client_processes": len(fleet.pids),
        "idle_fds": idle_fds,
        "before": reading(),
        "series": [],
    }
    foreign = ForeignLoad()
    for cycle in range(1, args.cycles + 1):
        job_ids, paths = new_paths(redis_url, args.soak_clients, args.jobs)
        connected = storm(fleet, port, paths, args.connect_timeout)
        load = follow(
            fleet,
            store,
            job_ids,
            rate=args.rate,
            seconds=args.soak_events * len(job_ids) / args.rate,
            drain_limit=args.drain_limit,
        )
        fleet.close()
        left = time.monotonic()
        remaining = wait_for_leave([pid], port, LEAVE_TIMEOUT)
        leave_seconds = round(time.monotonic() - left, 1)
        finish_jobs(store, job_ids)
        time.sleep(args.settle)
        entry = {
            "cycle": cycle,
            "held": connected["held"],
            "non_200": connected["non_200"],
            "connect_failures_total": connected["connect_failures_total"],
            "no_first_event": connected["no_first_event"],
            "held_ms_p99": connected["held_ms_p99"],
            "latency_p99_ms": load["latency"].get("p99_ms"),
            "events_lost": load["exactly_once"]["events_lost"],
            "events_duplicated": load["exactly_once"]["events_duplicated"],
            "connections_after_leave": remaining,
            "leave_seconds": leave_seconds,
            **reading(),
        }
        figures["series"].append(entry)
        print(
            f"[soak] cycle {cycle}: held {entry['held']}, non-200 {entry['non_200']}, "
            f"RSS {entry['rss_kb'] / 1024:.1f} MB, fds {entry['fds']}, tasks {entry['tasks']}, "
            f"objects {entry['gc_objects_after_full_gc']}",
            flush=True,
        )
    figures["foreign_cpu_cores"] = foreign.cores()
    series = figures["series"]
    if series:
        first, last = series[0], series[-1]
        figures["rss_ratio_last_to_first"] = round(last["rss_kb"] / first["rss_kb"], 3)
        figures["events_lost_total"] = sum(entry["events_lost"] for entry in series)
        figures["events_duplicated_total"] = sum(entry["events_duplicated"] for entry in series)
        figures["non_200_total"] = sum(sum(entry["non_200"].values()) for entry in series)
    return figures


# --- the result table -----------------------------------------------------------------------


# The targets, by (several API processes?, clients): held = connect → first event.
HELD_TARGET_MS = {(False, 1000): 3000, (True, 10000): 5000}
LATENCY_TARGET_MS = {(False, 1000): 20, (False, 5000): 100, (True, 10000): 50}


def _storm_rows(name: str, phase: dict[str, Any], cmd: str) -> list[Row]:
    n = phase["clients"]
    where = f"N={n:,} at once, {phase['api_processes']} API process(es)"
    s = phase["storm"]
    statuses = ", ".join(f"{code}×{count:,}" for code, count in sorted(s["non_200"].items()))
    rows = [
        Row(
            f"{name}: streams held ({where})",
            f"{s['held']:,} of {n:,}",
            "all held",
            s["held"] == n,
            cmd,
        ),
        Row(
            f"{name}: non-200 answers by status / connect failures / no first event ({where})",
            f"{statuses or '0'} / {s['connect_failures_total']:,} / {s['no_first_event']:,}",
            "0 / 0 / 0",
            s["non_200_total"] == 0
            and s["connect_failures_total"] == 0
            and not s["no_first_event"],
            cmd,
        ),
    ]
    held_target = HELD_TARGET_MS.get((phase["api_processes"] > 1, n))
    if s["held_ms_p50"] is not None:
        rows.append(
            Row(
                f"{name}: held (connect attempt → first data) p50 / p99 / max ({where})",
                f"{s['held_ms_p50']:,.0f} / {s['held_ms_p99']:,.0f} / {s['held_ms_max']:,.0f} ms",
                f"max ≤ {held_target:,} ms" if held_target else "",
                s["held_ms_max"] <= held_target if held_target else None,
                cmd,
            )
        )
    load = phase["load"]
    lat = load["latency"]
    latency_target = LATENCY_TARGET_MS.get((phase["api_processes"] > 1, n))
    if lat.get("received"):
        pauses = load.get("gc_pauses", {})
        cores = load.get("cpu_cores", {})
        rows.append(
            Row(
                f"{name}: delivery latency p50 / p99 after the storm, "
                f"{load['writer']['events_per_s']:,.0f} events/s "
                f"({phase['clients_per_job']} client(s)/job); API GC pauses ≥ 5 ms: count, "
                f"longest; CPU cores API / clients",
                f"{lat['p50_ms']:.1f} / {lat['p99_ms']:.1f} ms; "
                f"{pauses.get('count', 0)}, {pauses.get('max_ms', 0):.0f} ms; "
                f"{cores.get('api', 0):.2f} / {cores.get('clients', 0):.2f}",
                f"p99 ≤ {latency_target} ms" if latency_target else "",
                lat["p99_ms"] <= latency_target if latency_target else None,
                cmd,
            )
        )
    once = load["exactly_once"]
    rows.append(
        Row(
            f"{name}: events lost / duplicated over {once['streams_checked']:,} held streams "
            f"({once['events_expected']:,} expected)",
            f"{once['events_lost']:,} / {once['events_duplicated']:,}",
            "0 / 0",
            once["events_lost"] == 0 and once["events_duplicated"] == 0,
            cmd,
        )
    )
    if "rss_after_leave_kb" in phase:
        mb = {
            key: " / ".join(f"{phase[key][pid] / 1024:.0f}" for pid in phase["rss_after_leave_kb"])
            for key in ("rss_before_kb", "rss_held_kb", "rss_after_leave_kb")
        }
        rows.append(
            Row(
                f"{name}: API RSS per process before → held → after all left ({where})",
                f"{mb['rss_before_kb']} → {mb['rss_held_kb']} → {mb['rss_after_leave_kb']} MB",
                "",
                None,
                cmd,
            )
        )
    if phase["api_processes"] > 1:
        split = sorted(phase["connections_per_process"].values(), reverse=True)
        rss = [
            f"{value / 1024:.0f}"
            for key, value in phase["rss_held_kb"].items()
            if key != "supervisor"
        ]
        rows.append(
            Row(
                f"{name}: connections per API process; RSS per process held ({where})",
                f"{' / '.join(f'{c:,}' for c in split)}; {' / '.join(rss)} MB "
                f"(supervisor {phase['rss_held_kb'].get('supervisor', 0) / 1024:.0f} MB)",
                "",
                None,
                cmd,
            )
        )
    return rows


def _sizes(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip() and int(part) > 0]


def table(figures: dict[str, Any]) -> list[Row]:
    cmd = command_for(SCRIPT)
    rows: list[Row] = []
    for name, phase in figures["phases"].items():
        if name.startswith("storm") and "error" not in phase:
            rows.extend(_storm_rows(name, phase, cmd))
    restart = figures["phases"].get("restart")
    if restart and "error" not in restart:
        once = restart["load"]["exactly_once"]
        rows.append(
            Row(
                f"restart: {restart['clients']:,} clients through a rolling restart of the "
                f"API's {figures.get('processes', 2)} processes under load: reconnects / "
                "answered 200 / refused (by status) / held at the end",
                f"{restart['reconnects']:,} / {restart['reconnected']:,} / "
                f"{restart['reconnect_failures'] or 0} / {restart['held_at_end']:,}",
                "every client back, none refused",
                restart["held_at_end"] == restart["clients"] and not restart["reconnect_failures"],
                cmd,
            )
        )
        rows.append(
            Row(
                "restart: loss → 200 again p50 / max (the client's jittered retry: included); "
                "events lost / duplicated across the restart",
                f"{restart['reconnect_ms_p50']:,.0f} / {restart['reconnect_ms_max']:,.0f} ms; "
                f"{once['events_lost']:,} / {once['events_duplicated']:,} "
                f"of {once['events_expected']:,}",
                "0 / 0",
                once["events_lost"] == 0 and once["events_duplicated"] == 0,
                cmd,
            )
        )
    soak = figures["phases"].get("soak")
    if soak and "error" not in soak and soak["series"]:
        first, last = soak["series"][0], soak["series"][-1]
        cycles = len(soak["series"])
        rows.append(
            Row(
                f"soak: API RSS after cycle 1 → cycle {cycles} ({soak['clients']:,} clients "
                "at once per cycle, all leave)",
                f"{first['rss_kb'] / 1024:.1f} → {last['rss_kb'] / 1024:.1f} MB "
                f"(× {soak['rss_ratio_last_to_first']:.3f})",
                f"≤ × {RSS_TARGET_RATIO}",
                soak["rss_ratio_last_to_first"] <= RSS_TARGET_RATIO,
                cmd,
            )
        )
        rows.append(
            Row(
                f"soak: API open fds / asyncio tasks / objects (frozen + tracked) before → "
                f"after cycle 1 → {cycles}",
                " / ".join(
                    " → ".join(f"{value:,}" for value in values)
                    for values in (
                        [entry["fds"] for entry in (soak["before"], first, last)],
                        [entry["tasks"] for entry in (soak["before"], first, last)],
                        [_objects(entry) for entry in (soak["before"], first, last)],
                    )
                ),
                "",
                None,
                cmd,
            )
        )
        rows.append(
            Row(
                f"soak: non-200 answers / events lost / duplicated over {cycles} cycles",
                f"{soak['non_200_total']:,} / {soak['events_lost_total']:,} / "
                f"{soak['events_duplicated_total']:,}",
                "0 / 0 / 0",
                soak["non_200_total"] == 0
                and soak["events_lost_total"] == 0
                and soak["events_duplicated_total"] == 0,
                cmd,
            )
        )
    for allocator in ("pymalloc", "malloc"):
        memory = figures["phases"].get(f"memory-{allocator}")
        if memory and "error" not in memory and memory["series"]:
            rss = [memory["before"]["rss_kb"], *(entry["rss_kb"] for entry in memory["series"])]
            rows.append(
                Row(
                    f"memory, PYTHONMALLOC={allocator}: API RSS before → after each of "
                    f"{len(memory['series'])} cycles of {memory['clients']:,} clients leaving",
                    " → ".join(f"{kb / 1024:.0f}" for kb in rss) + " MB",
                    "",
                    None,
                    cmd,
                )
            )
    return rows


def _objects(entry: dict[str, Any]) -> int:
    return int(entry.get("gc_frozen") or 0) + int(entry.get("gc_objects_after_full_gc") or 0)


# --- main -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--storm", default="1000,5000", help="storm-1 sizes (one API process), comma-separated"
    )
    parser.add_argument(
        "--cpython-gc",
        default="5000",
        help="storm-1 sizes also run with the API's GC policy off (GC_FREEZE_EVERY_SECONDS=0)",
    )
    parser.add_argument(
        "--storm-hosts", type=int, default=10000, help="storm-N clients; 0 skips it"
    )
    parser.add_argument("--processes", type=int, default=2, help="API processes for storm-N")
    parser.add_argument(
        "--restart-clients",
        type=int,
        default=4000,
        help="clients held through a rolling restart of the API processes; 0 skips it",
    )
    parser.add_argument("--restart-after", type=float, default=3.0, help="seconds into the load")
    parser.add_argument("--restart-load-seconds", type=float, default=15.0)
    parser.add_argument("--soak-clients", type=int, default=2000, help="clients per soak cycle")
    parser.add_argument("--cycles", type=int, default=20, help="soak cycles; 0 skips the soak")
    parser.add_argument(
        "--allocator-clients", type=int, default=5000, help="clients per allocator-soak cycle"
    )
    parser.add_argument(
        "--allocator-cycles",
        type=int,
        default=3,
        help="cycles of the soak under each allocator (pymalloc, malloc); 0 skips them",
    )
    parser.add_argument("--soak-events", type=int, default=3, help="events per job per cycle")
    parser.add_argument("--jobs", type=int, default=1000, help="jobs the clients spread over")
    parser.add_argument("--rate", type=float, default=1000.0, help="events written per second")
    parser.add_argument("--load-seconds", type=float, default=10.0, help="busy load after a storm")
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=30.0,
        help="per connection: TCP connect, then (again) the first event",
    )
    parser.add_argument(
        "--clients-per-proc", type=int, default=2500, help="connections per client process"
    )
    parser.add_argument("--drain-limit", type=float, default=90.0, help="wait for late events")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds before a soak reading")
    parser.add_argument(
        "--quiet-timeout", type=float, default=900.0, help="wait at most this for a quiet machine"
    )
    parser.add_argument("--keep-logs", type=Path, help="copy the server logs here at the end")
    args = parser.parse_args()

    fd_limit = raise_fd_limit()  # before any child starts: they inherit it
    figures: dict[str, Any] = {
        "fd_limit": fd_limit,
        "rate": int(args.rate),
        "load_seconds": args.load_seconds,
        "jobs": args.jobs,
        "connect_timeout_s": args.connect_timeout,
        "processes": args.processes,
        "phases": {},
    }
    for clients in (*_sizes(args.storm), args.storm_hosts, args.soak_clients):
        if clients + CLIENT_FD_RESERVE > fd_limit:
            # One API process may be handed every connection of a storm.
            print(f"warning: {clients} clients may exceed one API process's fd limit {fd_limit}")
    with tempfile.TemporaryDirectory(prefix="yousync-storm-") as tmp:
        workdir = Path(tmp)
        redis_server = stack.redis_proc(workdir).start()
        try:
            redis_port = int(redis_server.name.split(":")[1])
            redis_url = f"redis://{HOST}:{redis_port}/0"
            store = sync_store(redis_url)
            spool = workdir / "spool"
            spool.mkdir()
            env = api_env(redis_url, spool)
            common = {"store": store, "redis_url": redis_url, "args": args}

            def phase(
                name: str, clients: int, run: Callable[[ClientFleet], dict[str, Any]]
            ) -> None:
                if clients <= 0:
                    return
                quiet = wait_for_quiet(timeout=args.quiet_timeout)
                try:
                    with fleet_for(clients, args, fd_limit) as fleet:
                        figures["phases"][name] = run(fleet)
                except (TimeoutError, OSError, RuntimeError) as exc:
                    # Report what broke instead of hiding the phase (e.g. an fd limit).
                    print(f"[{name}] failed: {exc!r}", flush=True)
                    figures["phases"][name] = {"clients": clients, "error": repr(exc)}
                figures["phases"][name]["background_cpu_cores"] = quiet

            def one_api(label: str, overrides: dict[str, str]) -> tuple[stack.Proc, Path]:
                """One API process with the GC probe, logging to its own file."""
                gc_log = workdir / f"gc-{label}.log"
                server = uvicorn_server(
                    "api",
                    API_APP,
                    {**env, **overrides, "BENCH_GC_LOG": str(gc_log)},
                    stack.REPO_ROOT,
                    workdir,
                )
                return server, gc_log

            def on_one_api(
                label: str,
                overrides: dict[str, str],
                body: Callable[[stack.Proc, Path], dict[str, Any]],
            ) -> dict[str, Any]:
                server, gc_log = one_api(label, overrides)
                try:
                    return {**body(server, gc_log), "api_overrides": overrides}
                finally:
                    server.stop()

            def storm_1(
                label: str, clients: int, overrides: dict[str, str]
            ) -> Callable[[ClientFleet], dict[str, Any]]:
                def run(fleet: ClientFleet) -> dict[str, Any]:
                    return on_one_api(
                        label,
                        overrides,
                        lambda server, gc_log: run_storm(
                            label=label,
                            port=int(server.name.split(":")[1]),
                            workers=[server.pid],
                            supervisor=None,
                            clients=clients,
                            fleet=fleet,
                            gc_log=gc_log,
                            **common,
                        ),
                    )

                return run

            def storm_n(fleet: ClientFleet) -> dict[str, Any]:
                port = stack.free_port()
                gc_log = workdir / "gc-storm-n.log"  # every API process appends its own lines
                server = host_api(
                    args.processes, {**env, "BENCH_GC_LOG": str(gc_log)}, workdir, port
                )
                try:
                    workers = serving_workers(server.pid, args.processes, port, redis_port)
                    return run_storm(
                        label="storm-N",
                        port=port,
                        workers=workers,
                        supervisor=server.pid,
                        clients=args.storm_hosts,
                        fleet=fleet,
                        gc_log=gc_log,
                        **common,
                    )
                finally:
                    server.stop()

            def soak(
                label: str, clients: int, cycles: int, overrides: dict[str, str]
            ) -> Callable[[ClientFleet], dict[str, Any]]:
                sized = argparse.Namespace(**{**vars(args), "soak_clients": clients})
                sized.cycles = cycles

                def run(fleet: ClientFleet) -> dict[str, Any]:
                    return on_one_api(
                        label,
                        overrides,
                        lambda server, gc_log: run_soak(
                            server=server,
                            gc_log=gc_log,
                            base_url=f"http://{HOST}:{server.name.split(':')[1]}",
                            port=int(server.name.split(":")[1]),
                            fleet=fleet,
                            **{**common, "args": sized},
                        ),
                    )

                return run

            for clients in _sizes(args.storm):
                phase(f"storm-1x{clients}", clients, storm_1(f"storm-1x{clients}", clients, {}))
                if clients in _sizes(args.cpython_gc):
                    # The same storm and load under CPython's own collection schedule, in the
                    # same run: what the API's GC policy (yousync/api/gc_policy.py) changes.
                    label = f"storm-1x{clients}-cpython-gc"
                    off = {"GC_FREEZE_EVERY_SECONDS": "0"}
                    phase(label, clients, storm_1(label, clients, off))
            phase("storm-N", args.storm_hosts, storm_n)

            def restart(fleet: ClientFleet) -> dict[str, Any]:
                port = stack.free_port()
                gc_log = workdir / "gc-restart.log"
                server = host_api(
                    args.processes, {**env, "BENCH_GC_LOG": str(gc_log)}, workdir, port
                )
                try:
                    serving_workers(server.pid, args.processes, port, redis_port)
                    return run_restart(port=port, supervisor=server.pid, fleet=fleet, **common)
                finally:
                    server.stop()

            phase("restart", args.restart_clients, restart)
            phase(
                "soak",
                args.soak_clients if args.cycles > 0 else 0,
                soak("soak", args.soak_clients, args.cycles, {}),
            )
            # Where the memory of streams that left goes: the same short soak under Python's
            # small-object allocator (the default) and under glibc's malloc, which
            # malloc_trim can hand back to the system.
            for allocator in ("pymalloc", "malloc"):
                phase(
                    f"memory-{allocator}",
                    args.allocator_clients if args.allocator_cycles > 0 else 0,
                    soak(
                        f"memory-{allocator}",
                        args.allocator_clients,
                        args.allocator_cycles,
                        {"PYTHONMALLOC": allocator},
                    ),
                )
        finally:
            redis_server.stop()
            if args.keep_logs:
                args.keep_logs.mkdir(parents=True, exist_ok=True)
                for log in workdir.glob("*.log"):
                    shutil.copy(log, args.keep_logs / log.name)
    path = write_result("sse_storm", figures, table(figures))
    print(path.read_text())
    write_summary()


if __name__ == "__main__":
    main()
