"""SSE fan-out: how many live progress streams one API process holds, what each costs, and how
fast an event reaches them — against a naive per-client polling loop in the same run.

Why this shape: the product's claim (ARCHITECTURE "Why Streams + pub/sub") is that an idle SSE
client costs Redis nothing and a live event costs one pub/sub message per API process, not one
read per client. That is only true if it holds at thousands of clients on one process, so this
benchmark measures exactly that on loopback, with bounded phases:

  per N (1,000 / 5,000 / 10,000 clients), on a fresh API process (uvicorn, one process):
    connect   N raw SSE clients, 500 at a time    → held, time to first event, API CPU
    held      API RSS and fds before/after        → KB per client; Redis connections of the API
    idle      10 s, no writes                     → Redis commands/s caused by idle clients
    load      1,000 events/s for 5 s (1,000 jobs, N/1,000 clients per job, so every client
              gets one event per second)          → delivery latency p50/p99, API CPU, the
                                                    API's garbage-collection pauses
    leave     all clients disconnect              → RSS and fds after they left
  then the naive reference (bench/naive_polling_app.py: HGETALL per client per second) with
  1,000 clients and the same load, and the ratios naive / ours.

How it measures:
* Delivery latency is receipt time in the client process minus the `time.time()` the writer
  put into the event's message just before running the product's write script
  (`JobStore.update`: HSET + XADD + PUBLISH): it covers Redis, the hub, sse-starlette, uvicorn
  and the loopback socket. The writer visits the jobs in a shuffled order.
* Redis commands are `INFO` deltas minus the writer's share (a fixed number of commands per
  write, calibrated first) and the probe's own `INFO`, i.e. what the server under test caused.
  "Caused by idle clients" subtracts the same server's rate with no client connected (its stall
  watcher's 2 commands/s). STALL_SECONDS is raised so the watcher does not start writing
  `stalled` events for the benchmark's silent jobs mid-measurement.
* The API runs as bench/_gc_logged_api.py: the product's own `main:app` object with a
  `gc.callbacks` timer installed first, so every collection pause ≥ 5 ms during the load is
  listed next to the latencies; after the load (never before, so a forced collection cannot
  suppress a natural one) a SIGUSR1 reports how long one full collection takes with N clients.
* Other processes' CPU during each window is recorded (`foreign_cpu_cores`): this machine is
  shared, and each round first waits for it to be quiet.

Run: `make bench`, or alone from the repository root: .venv/bin/python -m
bench.bench_sse_fanout [--sizes 1000,5000,10000] [--client-procs 1] (about 8 minutes).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import redis

from bench import _sse_clients
from bench._gc_probe import read_pauses, request_snapshot
from bench._jobs import BENCH_CLIENT_PREFIX, create_jobs, sync_store
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
from bench.summary import write_summary
from devtools import stack
from yousync.core.jobs import JobStore

HOST = "127.0.0.1"
TOKEN = "bench-fanout"
BENCH_DIR = Path(__file__).resolve().parent
SCRIPT = Path(__file__).name
# The API's Redis pool cap (Settings.redis_max_connections), the hub's subscription and the
# stream-start reader's own connection (yousync/api/streaming/read_batcher.py).
API_REDIS_CONNECTION_CAP = 50 + 2
CONNECT_TIMEOUT = 10.0  # per connection: TCP connect, then the first event
PHASE_TIMEOUT = 240.0  # any single command to the client processes
SLOW_MS = 20  # the p99 target at 1,000 clients
# The product's app object with bench/_gc_probe.py's hooks installed before it is imported.
API_APP = "bench._gc_logged_api:app"


class ClientFleet:
    """One or more client processes (bench/_sse_clients.py) driven as one."""

    def __init__(self, processes: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipes: list[Any] = []
        self._procs: list[Any] = []
        for _ in range(processes):
            parent, child = context.Pipe()
            proc = context.Process(target=_sse_clients.serve, args=(child,), daemon=True)
            proc.start()
            self._pipes.append(parent)
            self._procs.append(proc)

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self._procs]

    def _call(self, command: str, per_process: list[tuple[Any, ...]], timeout: float) -> list[Any]:
        for pipe, args in zip(self._pipes, per_process, strict=True):
            pipe.send((command, args))
        deadline = time.monotonic() + timeout
        replies = []
        for pipe in self._pipes:
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"client process: no answer to {command!r} in {timeout:.0f}s")
            replies.append(pipe.recv())
        return replies

    def call(self, command: str, *args: Any, timeout: float = PHASE_TIMEOUT) -> list[Any]:
        return self._call(command, [args] * len(self._pipes), timeout)

    def connect(
        self, port: int, paths: list[str], batch: int, limit: float = CONNECT_TIMEOUT
    ) -> dict[str, Any]:
        """`batch` connections at a time over all processes; `limit` bounds each connection's
        TCP connect and, separately, its wait for the first event."""
        count = len(self._pipes)
        shares = [paths[index::count] for index in range(count)]
        per_process = [(HOST, port, share, max(1, batch // count), limit) for share in shares]
        replies = self._call("connect", per_process, PHASE_TIMEOUT)
        failures: dict[str, int] = {}
        for reply in replies:
            for reason, number in reply["failures"].items():
                failures[reason] = failures.get(reason, 0) + number
        return {
            "held": sum(reply["held"] for reply in replies),
            "lost": sum(reply["lost"] for reply in replies),
            "open": sum(reply["open"] for reply in replies),
            "failures": failures,
            "seconds": max(reply["seconds"] for reply in replies),
            "first_event_seconds": [s for reply in replies for s in reply["first_event_seconds"]],
        }

    def drain(self, expected: int, *, quiet: float = 3.0, limit: float = 90.0) -> float:
        """Wait until `expected` events arrived or none arrived for `quiet` seconds; returns
        the seconds waited. Past the API's capacity deliveries queue up rather than vanish, and
        counting them before they land would report late events as lost."""
        started = last_growth = time.monotonic()
        seen = 0
        while time.monotonic() - started < limit:
            count = sum(self.call("count"))
            if count >= expected:
                break
            if count > seen:
                seen, last_growth = count, time.monotonic()
            elif time.monotonic() - last_growth > quiet:
                break
            time.sleep(0.25)
        return round(time.monotonic() - started, 1)

    def receipts(self) -> tuple[list[tuple[float, float]], int]:
        """(write time, receipt time) of every recorded event, and the streams still held."""
        replies = self.call("receipts")
        return [v for reply in replies for v in reply["receipts"]], sum(r["held"] for r in replies)

    def close(self) -> None:
        self.call("close", 30.0)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.call("stop", timeout=10)
        for proc in self._procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()


class RedisProbe:
    """Redis's own counters; every reading is one command (INFO), subtracted from deltas."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url, client_name=f"{BENCH_CLIENT_PREFIX}probe")

    def snapshot(self) -> dict[str, Any]:
        info = self.client.execute_command("INFO", "stats", "commandstats", "cpu")
        return {
            "commands": int(info["total_commands_processed"]),
            "cpu": float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
            "calls": {
                name.removeprefix("cmdstat_"): int(value["calls"])
                for name, value in info.items()
                if name.startswith("cmdstat_")
            },
        }

    def server_connections(self) -> int:
        """Connections that are not this benchmark's own (all of ours are named bench-…)."""
        return sum(
            1
            for client in self.client.client_list()
            if not client.get("name", "").startswith(BENCH_CLIENT_PREFIX)
        )


class Window:
    """Counters at the start of a measuring window; `end()` turns them into per-second rates."""

    def __init__(self, probe: RedisProbe, pids: dict[str, int]) -> None:
        self.probe = probe
        self.pids = pids
        self.started = time.perf_counter()
        self.redis = probe.snapshot()
        self.cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
        self.foreign = ForeignLoad()

    def end(self, writes: int = 0, commands_per_write: float = 0.0) -> dict[str, Any]:
        seconds = time.perf_counter() - self.started
        after = self.probe.snapshot()
        # The INFO that opened the window is counted in `after`; the writer's share is known.
        commands = after["commands"] - self.redis["commands"] - 1 - writes * commands_per_write
        calls = {
            name: count - self.redis["calls"].get(name, 0)
            for name, count in after["calls"].items()
            if count - self.redis["calls"].get(name, 0) > 0 and name != "info"
        }
        cpu = {name: cpu_seconds(pid) - self.cpu[name] for name, pid in self.pids.items()}
        redis_cpu = after["cpu"] - self.redis["cpu"]
        return {
            "seconds": round(seconds, 2),
            "foreign_cpu_cores": self.foreign.cores(),
            "foreign_top": [
                (pid, round(cpu, 2), _cmd(pid)) for pid, cpu in self.foreign.top if cpu > 0.05
            ],
            "server_redis_commands_per_s": round(commands / seconds, 1),
            "redis_calls_by_command": calls,
            "redis_cpu_cores": round(redis_cpu / seconds, 3),
            "cpu_cores": {name: round(value / seconds, 3) for name, value in cpu.items()},
        }


def _cmd(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:100]
    except OSError:
        return "?"


def write_load(
    store: JobStore, job_ids: list[str], progress: dict[str, int], *, rate: float, seconds: float
) -> dict[str, Any]:
    """`rate` events/s, round-robin over the jobs, each carrying its write time. Paced against
    a schedule, so a slow write is caught up rather than lowering the rate."""
    total = int(rate * seconds)
    started = time.perf_counter()
    behind = 0.0
    for index in range(total):
        delay = started + index / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        else:
            behind = max(behind, -delay)
        job_id = job_ids[index % len(job_ids)]
        # Progress never decreases and stays below 100 (reserved for `completed`).
        progress[job_id] = min(99, progress.get(job_id, 0) + 1)
        store.update(
            job_id,
            TOKEN,
            status="processing",
            progress=progress[job_id],
            stage="analyzing",
            message=f"t={time.time():.6f}",
        )
    elapsed = time.perf_counter() - started
    return {
        "events": total,
        "seconds": round(elapsed, 2),
        "events_per_s": round(total / elapsed, 1),
        "max_behind_schedule_ms": round(behind * 1000, 1),
    }


def calibrate_writer(store: JobStore, probe: RedisProbe, redis_url: str) -> float:
    """Commands Redis counts per `JobStore.update` (the script plus each redis.call in it),
    measured while nothing else talks to Redis."""
    [job_id] = create_jobs(redis_url, TOKEN, 1)
    store.update(job_id, TOKEN, status="processing", progress=1, stage="analyzing", message="x")
    before = probe.snapshot()["commands"]
    writes = 200
    for _ in range(writes):
        store.update(job_id, TOKEN, status="processing", progress=1, stage="analyzing", message="x")
    store.update(job_id, TOKEN, status="completed", progress=100, stage="done", message="x")
    after = probe.snapshot()["commands"]
    return round((after - before - 1) / (writes + 1), 2)


def hub_clients(base_url: str) -> int | None:
    """The API's own count of subscribed streams (GET /metrics), to cross-check `held`."""
    try:
        text = httpx.get(f"{base_url}/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        if line.startswith("yousync_sse_clients "):
            return int(float(line.split()[1]))
    return None


def wait_for_fds(pid: int, at_most: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fds = open_fds(pid)
        if fds <= at_most:
            return fds
        time.sleep(0.2)
    return open_fds(pid)


def latency_figures(receipts: list[tuple[float, float]], expected: int) -> dict[str, Any]:
    """Percentiles, plus where in time the slow deliveries were: a handful of 100 ms write
    windows holding all of them means the server paused; spread evenly means it queued."""
    if not receipts:
        return {"received": 0, "expected": expected}
    ms = [(received - written) * 1000 for written, received in receipts]
    start = min(written for written, _ in receipts)
    slow_windows: dict[int, float] = {}
    for (written, _), value in zip(receipts, ms, strict=True):
        if value > SLOW_MS:
            window = int((written - start) * 10)
            slow_windows[window] = max(slow_windows.get(window, 0.0), value)
    return {
        "received": len(ms),
        "expected": expected,
        "p50_ms": round(percentile(ms, 50), 2),
        "p90_ms": round(percentile(ms, 90), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2),
        f"over_{SLOW_MS}ms": sum(1 for value in ms if value > SLOW_MS),
        # 100 ms window (offset from the first write, in s) → worst latency of events in it
        "slow_windows": {f"{w / 10:.1f}": round(v, 1) for w, v in sorted(slow_windows.items())},
    }


def run_round(
    *,
    label: str,
    server: stack.Proc,
    base_url: str,
    path_prefix: str,
    clients: int,
    fleet: ClientFleet,
    probe: RedisProbe,
    store: JobStore,
    redis_url: str,
    commands_per_write: float,
    args: argparse.Namespace,
    gc_log: Path | None = None,
) -> dict[str, Any]:
    """One server, `clients` streams: connect, idle, load, leave (see the module docstring)."""
    port = int(base_url.rsplit(":", 1)[1])
    per_job = max(1, clients // 1000)
    job_ids = create_jobs(redis_url, TOKEN, clients // per_job)
    paths = [f"{path_prefix}{job_ids[i % len(job_ids)]}" for i in range(clients)]
    # The writer visits the jobs in an order unrelated to the order the clients connected:
    # the naive pollers' phases follow their connect times, and a writer walking the same
    # order would meet them at a fixed offset, making the naive latency an artefact.
    write_order = random.Random(clients).sample(job_ids, len(job_ids))
    progress: dict[str, int] = {}
    pid = server.pid
    pids = {"server": pid, **{f"client{i}": p for i, p in enumerate(fleet.pids)}}
    figures: dict[str, Any] = {"clients": clients, "jobs": len(job_ids), "clients_per_job": per_job}
    print(f"[{label}] {clients} clients on {len(job_ids)} jobs", flush=True)

    # Warm-up: first requests import and build lazily; the baseline should not include that.
    fleet.connect(port, paths[:20], 20)
    fleet.close()
    time.sleep(1.0)
    fds_before = open_fds(pid)
    rss_before = rss_kb(pid)
    baseline = Window(probe, pids)
    time.sleep(min(5.0, args.idle))
    figures["no_clients"] = baseline.end()
    figures["rss_before_kb"] = rss_before
    figures["fds_before"] = fds_before

    connect_window = Window(probe, pids)
    connected = fleet.connect(port, paths, args.batch)
    connect_stats = connect_window.end()
    first = [s * 1000 for s in connected.pop("first_event_seconds")]
    figures["connect"] = {
        **connected,
        "connects_per_s": round(clients / connected["seconds"], 1),
        "first_event_ms_p50": round(percentile(first, 50), 1) if first else None,
        "first_event_ms_p99": round(percentile(first, 99), 1) if first else None,
        "server_cpu_ms_per_connect": round(
            connect_stats["cpu_cores"]["server"] * connect_stats["seconds"] * 1000 / clients, 3
        ),
    }
    print(f"[{label}] held {connected['held']} in {connected['seconds']:.1f}s", flush=True)
    time.sleep(2.0)
    held = connected["held"]
    rss_held = rss_kb(pid)
    figures["rss_held_kb"] = rss_held
    figures["rss_per_client_kb"] = round((rss_held - rss_before) / max(held, 1), 1)
    figures["fds_held"] = open_fds(pid)
    figures["server_redis_connections"] = probe.server_connections()
    figures["hub_clients"] = hub_clients(base_url) if path_prefix.startswith("/tokens") else None

    idle = Window(probe, pids)
    time.sleep(args.idle)
    figures["idle"] = idle.end()
    figures["idle"]["redis_commands_per_s_from_clients"] = round(
        figures["idle"]["server_redis_commands_per_s"]
        - figures["no_clients"]["server_redis_commands_per_s"],
        1,
    )

    load_started = time.time()
    fleet.call("record", load_started)
    load = Window(probe, pids)
    written = write_load(store, write_order, progress, rate=args.rate, seconds=args.seconds)
    figures["load"] = {"writer": written, **load.end(written["events"], commands_per_write)}
    expected = written["events"] * per_job * held // clients
    figures["load"]["drain_seconds"] = fleet.drain(expected)
    receipts, still_held = fleet.receipts()
    figures["load"]["latency"] = latency_figures(receipts, expected)
    figures["load"]["held_at_end"] = still_held
    figures["rss_after_load_kb"] = rss_kb(pid)
    if gc_log is not None:
        # Collections that stopped the API's event loop while events were in flight, then
        # (only now, so a forced collection cannot suppress a natural one during the load)
        # how long one full collection takes with N clients connected.
        pauses = read_pauses(gc_log, load_started, time.time())
        figures["load"]["gc_pauses"] = [
            {"at_s": round(when - load_started, 2), "generation": gen, "ms": ms}
            for when, gen, ms in pauses
        ]
        snapshot = request_snapshot(pid, gc_log, lambda: poke(base_url))
        figures["gc_objects_held"] = snapshot["objects"]
        figures["full_gc_ms_held"] = snapshot["full_gc_ms"]
    print(f"[{label}] latency {figures['load']['latency']}", flush=True)

    fleet.close()
    figures["fds_after_leave"] = wait_for_fds(pid, fds_before + 2, timeout=30)
    time.sleep(1.0)
    figures["rss_after_leave_kb"] = rss_kb(pid)
    figures["hub_clients_after_leave"] = (
        hub_clients(base_url) if path_prefix.startswith("/tokens") else None
    )
    # Finish the jobs, so no API process's stall watcher writes events for them later.
    for job_id in job_ids:
        store.update(job_id, TOKEN, status="completed", progress=100, stage="done", message="-")
    return figures


def poke(base_url: str) -> None:
    """Wake the API's event loop so its SIGUSR1 handler runs. Right after a 10,000-client load
    the loop may still be draining deliveries for longer than a request timeout; that is fine,
    the snapshot is read from the log, not from this answer."""
    with contextlib.suppress(httpx.TimeoutException):
        httpx.get(f"{base_url}/healthz", timeout=2.0)


def uvicorn_server(
    name: str, app: str, env: dict[str, str], cwd: Path, workdir: Path
) -> stack.Proc:
    """Started with the API's flags, so the product and the reference apps run under the same
    server settings."""
    return stack.uvicorn_proc(
        name, app, env, workdir, cwd, extra_args=stack.API_UVICORN_ARGS
    ).start()


@contextlib.contextmanager
def serving(proc: stack.Proc) -> Iterator[str]:
    try:
        yield f"http://{HOST}:{proc.name.split(':')[1]}"
    finally:
        proc.stop()


def ratio(naive: float, ours: float) -> float | None:
    return round(naive / ours, 1) if ours > 0 else None


def table(figures: dict[str, Any]) -> list[Row]:
    cmd = command_for(SCRIPT)
    rows: list[Row] = []
    for key, round_ in figures["rounds"].items():
        if not key.startswith("ours_"):
            continue
        n = round_["clients"]
        held = round_["connect"]["held"]
        lat = round_["load"]["latency"]
        rows.append(
            Row(
                f"SSE clients held on one API process (N={n:,})",
                f"{held:,}",
                f"{n:,} held" if n == 10000 else "all held",
                held == n,
                cmd,
            )
        )
        rows.append(
            Row(
                f"API RSS per idle SSE client (N={n:,})",
                f"{round_['rss_per_client_kb']:.1f} KB",
                "≤ 20 KB",
                round_["rss_per_client_kb"] <= 20,
                cmd,
            )
        )
        idle_cmds = round_["idle"]["redis_commands_per_s_from_clients"]
        rows.append(
            Row(
                f"Redis commands/s caused by idle clients (N={n:,})",
                f"{idle_cmds:.1f}/s",
                "≈ 0/s",
                abs(idle_cmds) < 1,
                cmd,
            )
        )
        conns = round_["server_redis_connections"]
        rows.append(
            Row(
                f"Redis connections of the API (N={n:,})",
                str(conns),
                f"independent of N (≤ pool cap {API_REDIS_CONNECTION_CAP})",
                conns <= API_REDIS_CONNECTION_CAP,
                cmd,
            )
        )
        if lat.get("received"):
            rows.append(
                Row(
                    f"Delivery latency p50 / p99, {figures['rate']:,} events/s (N={n:,}, "
                    f"{round_['clients_per_job']} client(s)/job)",
                    f"{lat['p50_ms']:.1f} / {lat['p99_ms']:.1f} ms",
                    "p99 ≤ 20 ms" if n == 1000 else "",
                    lat["p99_ms"] <= 20 if n == 1000 else None,
                    cmd,
                )
            )
        if "drain_seconds" in round_["load"]:
            rows.append(
                Row(
                    f"Events delivered / written to its clients (N={n:,}; seconds the last ones "
                    "arrived after the writer stopped)",
                    f"{lat.get('received', 0):,} / {lat['expected']:,} "
                    f"(+{round_['load']['drain_seconds']:.1f} s)",
                    "all delivered",
                    lat.get("received", 0) >= lat["expected"],
                    cmd,
                )
            )
        if "full_gc_ms_held" in round_:
            pauses = round_["load"].get("gc_pauses", [])
            worst = max((p["ms"] for p in pauses), default=0.0)
            rows.append(
                Row(
                    f"API GC: one full collection with N={n:,} clients; pauses ≥ 5 ms during load",
                    f"{round_['full_gc_ms_held']:.0f} ms ({round_['gc_objects_held']:,} objects); "
                    f"{len(pauses)} pause(s), worst {worst:.0f} ms",
                    "",
                    None,
                    cmd,
                )
            )
        rows.append(
            Row(
                f"API CPU under load / idle (N={n:,})",
                f"{round_['load']['cpu_cores']['server'] * 100:.0f} % / "
                f"{round_['idle']['cpu_cores']['server'] * 100:.1f} % of a core",
                "",
                None,
                cmd,
            )
        )
        rows.append(
            Row(
                f"API RSS before → held → after clients left (N={n:,})",
                f"{round_['rss_before_kb'] / 1024:.0f} → {round_['rss_held_kb'] / 1024:.0f} → "
                f"{round_['rss_after_leave_kb'] / 1024:.0f} MB",
                "",
                None,
                cmd,
            )
        )
    comparison = figures.get("naive_vs_ours")
    if comparison:
        n = figures["naive_clients"]
        for name, values in comparison.items():
            rows.append(
                Row(
                    f"Naive polling vs ours, N={n:,}: {name}",
                    f"{values['naive']} vs {values['ours']} (× {values['ratio']})",
                    "",
                    None,
                    cmd,
                )
            )
    return rows


def compare(naive: dict[str, Any], ours: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Ratios naive / ours for the same clients and load (measured in this run)."""
    pairs = {
        "latency p50 (ms)": (naive["load"]["latency"]["p50_ms"], ours["load"]["latency"]["p50_ms"]),
        "latency p99 (ms)": (naive["load"]["latency"]["p99_ms"], ours["load"]["latency"]["p99_ms"]),
        "server Redis commands/s under load": (
            naive["load"]["server_redis_commands_per_s"],
            ours["load"]["server_redis_commands_per_s"],
        ),
        "server Redis commands/s idle": (
            naive["idle"]["server_redis_commands_per_s"],
            ours["idle"]["server_redis_commands_per_s"],
        ),
        "server CPU under load (cores)": (
            naive["load"]["cpu_cores"]["server"],
            ours["load"]["cpu_cores"]["server"],
        ),
        "server CPU idle (cores)": (
            naive["idle"]["cpu_cores"]["server"],
            ours["idle"]["cpu_cores"]["server"],
        ),
        "Redis CPU under load (cores)": (
            naive["load"]["redis_cpu_cores"],
            ours["load"]["redis_cpu_cores"],
        ),
    }
    return {
        name: {"naive": n, "ours": o, "ratio": ratio(float(n), float(o))}
        for name, (n, o) in pairs.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,5000,10000", help="client counts, comma-separated")
    parser.add_argument("--naive-clients", type=int, default=1000, help="0 skips the reference")
    parser.add_argument("--client-procs", type=int, default=1, help="client processes")
    parser.add_argument("--rate", type=float, default=1000.0, help="events written per second")
    parser.add_argument("--seconds", type=float, default=5.0, help="load phase length")
    parser.add_argument("--idle", type=float, default=10.0, help="idle phase length")
    parser.add_argument("--batch", type=int, default=500, help="connections opened at a time")
    parser.add_argument("--keep-logs", type=Path, help="copy the server logs here at the end")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",") if size]

    fd_limit = raise_fd_limit()  # before any child starts: they inherit it
    figures: dict[str, Any] = {
        "fd_limit": fd_limit,
        "rate": int(args.rate),
        "load_seconds": args.seconds,
        "idle_seconds": args.idle,
        "client_processes": args.client_procs,
        "connect_batch": args.batch,
        "naive_clients": args.naive_clients,
        "rounds": {},
    }
    with tempfile.TemporaryDirectory(prefix="yousync-fanout-") as tmp:
        workdir = Path(tmp)
        redis_server = stack.redis_proc(workdir).start()
        fleet = ClientFleet(args.client_procs)
        try:
            redis_url = f"redis://{HOST}:{redis_server.name.split(':')[1]}/0"
            probe = RedisProbe(redis_url)
            store = sync_store(redis_url)
            figures["writer_commands_per_event"] = calibrate_writer(store, probe, redis_url)
            spool = workdir / "spool"
            spool.mkdir()
            env = {
                "ENVIRONMENT": "test",
                "REDIS_URL": redis_url,
                "S3_ENDPOINT_URL": "http://127.0.0.1:9",  # never called by the SSE path
                "S3_BUCKET": "bench-unused",
                "AWS_ACCESS_KEY_ID": "bench",
                "AWS_SECRET_ACCESS_KEY": "bench",
                "ANALYSIS_SERVER_URL": "http://127.0.0.1:9",
                "SPOOL_DIR": str(spool),
                # The stall watcher keeps running (its 2 commands/s are the "no clients"
                # baseline) but must not start writing `stalled` events for the benchmark's
                # jobs, which sit idle longer than the default 30 s at 10,000 clients.
                "STALL_SECONDS": "3600",
                **stack.API_ENV,  # as the product launches the API (PYTHONMALLOC=malloc)
            }
            common = {
                "fleet": fleet,
                "probe": probe,
                "store": store,
                "redis_url": redis_url,
                "commands_per_write": figures["writer_commands_per_event"],
                "args": args,
            }
            plan: list[tuple[str, int]] = [(f"ours_{n}", n) for n in sizes]
            if args.naive_clients:
                plan.insert(1 if plan else 0, (f"naive_{args.naive_clients}", args.naive_clients))
            for label, clients in plan:
                quiet = wait_for_quiet()
                naive = label.startswith("naive")
                if naive:
                    server = uvicorn_server(
                        "naive", "naive_polling_app:app", env, BENCH_DIR, workdir
                    )
                else:
                    gc_log = workdir / f"gc-{label}.log"
                    server = uvicorn_server(
                        "api",
                        API_APP,
                        {**env, "BENCH_GC_LOG": str(gc_log)},
                        stack.REPO_ROOT,
                        workdir,
                    )
                with serving(server) as base_url:
                    try:
                        figures["rounds"][label] = run_round(
                            label=label,
                            server=server,
                            base_url=base_url,
                            path_prefix="/naive/" if naive else "/tokens/analysis-progress/",
                            clients=clients,
                            gc_log=None if naive else gc_log,
                            **common,
                        )
                        figures["rounds"][label]["background_cpu_cores"] = quiet
                    except (TimeoutError, OSError) as exc:
                        # Report what broke instead of hiding the round (e.g. an fd limit).
                        figures["rounds"][label] = {"clients": clients, "error": repr(exc)}
                        fleet.close()
            ours = figures["rounds"].get(f"ours_{args.naive_clients}")
            naive_round = figures["rounds"].get(f"naive_{args.naive_clients}")
            if (
                ours
                and naive_round
                and all(
                    "p50_ms" in r.get("load", {}).get("latency", {}) for r in (ours, naive_round)
                )
            ):
                figures["naive_vs_ours"] = compare(naive_round, ours)
        finally:
            fleet.stop()
            redis_server.stop()
            if args.keep_logs:
                args.keep_logs.mkdir(parents=True, exist_ok=True)
                for log in workdir.glob("*.log"):
                    shutil.copy(log, args.keep_logs / log.name)
    rounds_ok = {k: v for k, v in figures["rounds"].items() if "error" not in v}
    path = write_result("sse_fanout", figures, table({**figures, "rounds": rounds_ok}))
    print(path.read_text())
    write_summary()


if __name__ == "__main__":
    main()
