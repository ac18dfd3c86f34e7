"""The production topology's costs: what nginx in front adds, and a deploy under load.

Everything runs as deploy/ sets it up: the API as `--workers 2` behind deploy/nginx's site
(rendered for this run, nginx connecting from 127.0.0.2, the only address whose X-Forwarded-For
the API trusts), on a Redis of its own. Direct and proxied are measured in the same run, round
by round, and compared by their medians over --rounds (11) rounds:

  sse       --sse-clients (4,000) streams through nginx AND as many straight to the API, both
            held at once and following the same jobs (clients spread evenly), so every event
            reaches both sides from the same API process at the same moment; each round writes
            --rate events/s for --seconds → delivery p99 per side (receipt in the client process
            minus the write time the writer put in the event), then the median over rounds of
            each side's p99 and of the per-round difference. Target: proxied p99 within +2 ms.
  upload    per round --uploads (30) 1 MB WAV uploads to each side, the side that goes first
            alternating → request → 202 p99 per side and round; median over rounds. Target:
            within +5 ms.
  big       one 100 MB WAV upload through nginx while its processes' RSS is sampled every 20 ms
            (flat = streamed through, not buffered; nginx's client_body_temp stays empty), and
            a Content-Length over client_max_body_size sent as headers only, its body trickled
            → the 413 JSON and how much of the body had been sent when it came (none).
  restart   --restart-clients (2,000) streams through nginx, reconnecting like browsers
            (their `retry:`, Last-Event-ID), under the busy load; uvicorn's supervisor gets
            SIGHUP (`systemctl reload yousync-api`: each process replaced in turn) → reconnects,
            non-200 answers, events lost / duplicated, seconds until every client resumed.

Clients and the writer run on the same two cores as the API and nginx, as in production on a
small host. Run: `make bench`, or alone from the repository root:
.venv/bin/python -m bench.bench_deploy [--rounds 11] [--sse-clients 4000] [--restart-clients
2000]. A smoke run: --rounds 2 --sse-clients 200 --uploads 5 --restart-clients 100
--big-mb 20.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bench._jobs import create_jobs, sync_store
from bench._stack import (
    ForeignLoad,
    Row,
    command_for,
    open_fds,
    percentile,
    raise_fd_limit,
    rss_kb,
    wait_for_quiet,
    write_result,
)
from bench.bench_sse_fanout import HOST, TOKEN, latency_figures, write_load
from bench.bench_sse_storm import (
    PATH_PREFIX,
    api_env,
    fleet_for,
    run_restart,
    serving_workers,
)
from bench.bench_upload_latency import unique, wav_of_size
from bench.summary import write_summary
from devtools import stack
from devtools.connections import children

SCRIPT = Path(__file__).name
PROXY_ADDR = "127.0.0.2"
MAX_UPLOAD_MB = 128  # room for the 100 MB upload; nginx admits 129m


# --- the topology under test ----------------------------------------------------------------


@contextlib.contextmanager
def topology(workdir: Path, processes: int) -> Iterator[dict[str, Any]]:
    """Redis, the API (`processes` processes, proxy headers trusted from PROXY_ADDR only) and
    nginx in front, as deploy/ renders them."""
    procs: list[stack.Proc] = []
    try:
        redis_server = stack.redis_proc(workdir).start()
        procs.append(redis_server)
        redis_port = int(redis_server.name.split(":")[1])
        redis_url = f"redis://{HOST}:{redis_port}/0"
        spool = workdir / "spool"
        spool.mkdir()
        env = {
            **api_env(redis_url, spool),
            "MAX_UPLOAD_MB": str(MAX_UPLOAD_MB),
            # 100 MB of the benchmarks' mono 44.1 kHz WAV is ~20 min of audio: admit it, so
            # the whole body travels through nginx instead of an early audio_too_long.
            "MAX_AUDIO_DURATION_SECONDS": "3600",
        }
        api_port = stack.free_port()
        api = stack.api_proc(
            env, workdir, api_port, processes=processes, forwarded_allow_ips=PROXY_ADDR
        ).start()
        procs.append(api)
        serving_workers(api.pid, processes, redis_port)
        proxy = stack.proxy_proc(
            workdir, env, api_port=api_port, flower_port=stack.free_port(), proxy_addr=PROXY_ADDR
        ).start()
        procs.append(proxy)
        yield {
            "redis_url": redis_url,
            "redis_port": redis_port,
            "spool": spool,
            "api": api,
            "api_port": api_port,
            "proxy": proxy,
            "proxy_port": int(proxy.name.split(":")[1]),
            "proxy_dir": proxy.cwd,
        }
    finally:
        for proc in reversed(procs):
            proc.stop()


# --- sse: the same events, direct and proxied --------------------------------------------------


def run_sse(topo: dict[str, Any], args: argparse.Namespace, fd_limit: int) -> dict[str, Any]:
    clients = args.sse_clients
    store = sync_store(topo["redis_url"])
    per_job = max(1, clients // args.jobs)
    job_ids = create_jobs(topo["redis_url"], TOKEN, max(1, clients // per_job))
    paths = [f"{PATH_PREFIX}{job_ids[i % len(job_ids)]}" for i in range(clients)]
    progress: dict[str, int] = {}
    rounds: list[dict[str, Any]] = []
    with (
        fleet_for(clients, args, fd_limit) as direct,
        fleet_for(clients, args, fd_limit) as proxied,
    ):
        held = {}
        for label, fleet, port in (
            ("direct", direct, topo["api_port"]),
            ("proxied", proxied, topo["proxy_port"]),
        ):
            connected = fleet.connect(port, paths, batch=500, limit=args.connect_timeout)
            held[label] = connected["held"]
            print(f"[sse] {label}: held {connected['held']} of {clients}", flush=True)
        nginx_fds = sum(open_fds(pid) for pid in children(topo["proxy"].pid))
        for index in range(args.rounds):
            started = time.time()
            for fleet in (direct, proxied):
                fleet.call("record", started)
            foreign = ForeignLoad()
            written = write_load(store, job_ids, progress, rate=args.rate, seconds=args.seconds)
            cores = foreign.cores()
            expected = written["events"] * per_job
            result: dict[str, Any] = {"writer": written, "foreign_cpu_cores": cores}
            for label, fleet in (("direct", direct), ("proxied", proxied)):
                fleet.drain(expected * held[label] // clients, limit=args.drain_limit)
                receipts, _ = fleet.receipts()
                result[label] = latency_figures(receipts, expected * held[label] // clients)
            rounds.append(result)
            print(
                f"[sse] round {index + 1}: p99 direct {result['direct'].get('p99_ms')} ms, "
                f"proxied {result['proxied'].get('p99_ms')} ms",
                flush=True,
            )
        for fleet in (direct, proxied):
            fleet.close()
    for job_id in job_ids:
        store.update(job_id, TOKEN, status="completed", progress=100, stage="done", message="-")
    return {
        "clients_per_side": clients,
        "held": held,
        "nginx_open_fds_held": nginx_fds,
        "rate": args.rate,
        "seconds": args.seconds,
        **medians(rounds, "p99_ms"),
        "median_p50_ms": {
            side: round(statistics.median(r[side]["p50_ms"] for r in rounds), 2)
            for side in ("direct", "proxied")
        },
        "lost": {
            side: sum(r[side]["expected"] - r[side]["received"] for r in rounds)
            for side in ("direct", "proxied")
        },
        "rounds": rounds,
    }


def medians(rounds: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """Median over rounds of each side's figure, and of the per-round difference (the paired
    comparison, which cancels what the machine did during that round)."""
    direct = [r["direct"][key] for r in rounds]
    proxied = [r["proxied"][key] for r in rounds]
    return {
        f"median_{key}": {
            "direct": round(statistics.median(direct), 2),
            "proxied": round(statistics.median(proxied), 2),
        },
        f"median_{key}_difference": round(
            statistics.median(p - d for p, d in zip(proxied, direct, strict=True)), 2
        ),
    }


# --- upload: 1 MB, direct and proxied -----------------------------------------------------------


def run_uploads(topo: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    payload = wav_of_size(1)
    bases = {
        "direct": f"http://{HOST}:{topo['api_port']}",
        "proxied": f"http://{HOST}:{topo['proxy_port']}",
    }
    rounds: list[dict[str, Any]] = []
    counter = 0
    with httpx.Client(timeout=60) as client:
        for base in bases.values():  # warm-up: connections, first-request imports
            _upload(client, base, unique(payload, counter := counter + 1))
        for index in range(args.rounds):
            order = list(bases) if index % 2 == 0 else list(reversed(bases))
            result: dict[str, Any] = {"first": order[0]}
            for side in order:
                times = []
                for _ in range(args.uploads):
                    counter += 1
                    times.append(_upload(client, bases[side], unique(payload, counter)))
                result[side] = {
                    "p50_ms": round(percentile(times, 50), 2),
                    "p99_ms": round(percentile(times, 99), 2),
                }
            _clear(topo["spool"])
            rounds.append(result)
            print(
                f"[upload] round {index + 1}: p99 direct {result['direct']['p99_ms']} ms, "
                f"proxied {result['proxied']['p99_ms']} ms",
                flush=True,
            )
    return {
        "uploads_per_side_per_round": args.uploads,
        **medians(rounds, "p99_ms"),
        "rounds": rounds,
    }


def _upload(client: httpx.Client, base: str, body: bytes) -> float:
    started = time.perf_counter()
    response = client.post(
        f"{base}/tokens/bench/upload-audio", files={"file": ("take.wav", body, "audio/wav")}
    )
    elapsed = (time.perf_counter() - started) * 1000
    assert response.status_code == 202, response.text
    return elapsed


def _clear(spool: Path) -> None:
    """The uploads' spool files: no worker runs here, and 1,000 of them fill a disk."""
    for path in spool.iterdir():
        with contextlib.suppress(OSError):
            path.unlink()


# --- big: 100 MB streamed through, an oversized body refused before it is sent ----------------


def run_big(topo: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    nginx = [topo["proxy"].pid, *children(topo["proxy"].pid)]
    base = f"http://{HOST}:{topo['proxy_port']}"
    payload = wav_of_size(args.big_mb)
    temp_dir = Path(topo["proxy_dir"]) / "client_body_temp"
    samples: list[int] = []
    temp_bytes: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(sum(rss_kb(pid) for pid in nginx))
            temp_bytes.append(_tree_bytes(temp_dir))
            time.sleep(0.02)

    idle_kb = sum(rss_kb(pid) for pid in nginx)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    with httpx.Client(timeout=300) as client:
        response = client.post(
            f"{base}/tokens/bench/upload-audio",
            files={"file": ("big.wav", payload, "audio/wav")},
        )
    seconds = time.perf_counter() - started
    stop.set()
    sampler.join()
    _clear(topo["spool"])
    figures: dict[str, Any] = {
        "upload_mb": round(len(payload) / 2**20, 1),
        "status": response.status_code,
        "seconds": round(seconds, 2),
        "nginx_rss_idle_kb": idle_kb,
        "nginx_rss_max_kb": max(samples),
        "nginx_rss_growth_kb": max(samples) - idle_kb,
        "samples": len(samples),
        "client_body_temp_max_bytes": max(temp_bytes),
    }
    figures["oversized"] = oversized(topo["proxy_port"], MAX_UPLOAD_MB + 50)
    return figures


def _tree_bytes(root: Path) -> int:
    total = 0
    with contextlib.suppress(OSError):
        for path in root.rglob("*"):
            with contextlib.suppress(OSError):
                total += path.stat().st_size
    return total


def oversized(port: int, megabytes: int) -> dict[str, Any]:
    """Headers announcing `megabytes`, then the body trickled in 64 KiB pieces while watching
    for an answer: how long until the 413 and how much body had gone out by then."""
    length = megabytes * 2**20
    head = (
        f"POST /tokens/bench/upload-audio HTTP/1.1\r\nHost: {HOST}\r\n"
        "Content-Type: multipart/form-data; boundary=x\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()
    sent = 0
    answer = b""
    with socket.create_connection((HOST, port), timeout=10) as sock:
        started = time.perf_counter()
        sock.sendall(head)
        sock.setblocking(False)
        chunk = b"\0" * 65536
        while time.perf_counter() - started < 10 and sent < length:
            with contextlib.suppress(BlockingIOError):
                answer += sock.recv(65536)
            if b"\r\n\r\n" in answer:
                break
            with contextlib.suppress(BlockingIOError, BrokenPipeError, ConnectionResetError):
                sent += sock.send(chunk)
            time.sleep(0.001)
        seconds = time.perf_counter() - started
        sock.setblocking(True)
        sock.settimeout(2)
        with contextlib.suppress(OSError):
            while b"}" not in answer:
                more = sock.recv(65536)
                if not more:
                    break
                answer += more
    status_line, _, rest = answer.partition(b"\r\n")
    body = rest.partition(b"\r\n\r\n")[2]
    return {
        "announced_mb": megabytes,
        "status_line": status_line.decode(errors="replace"),
        "body": body.decode(errors="replace"),
        "body_is_json": _is_json(body),
        "ms_to_answer": round(seconds * 1000, 1),
        "body_bytes_sent_before_answer": sent,
    }


def _is_json(body: bytes) -> bool:
    try:
        json.loads(body)
    except ValueError:
        return False
    return True


# --- restart: SIGHUP under 2,000 proxied clients ----------------------------------------------


def run_rolling_restart(
    topo: dict[str, Any], args: argparse.Namespace, fd_limit: int
) -> dict[str, Any]:
    store = sync_store(topo["redis_url"])
    # bench_sse_storm's restart phase, its clients pointed at nginx; the busy load's rate.
    restart_args = argparse.Namespace(**{**vars(args), "rate": args.restart_rate})
    with fleet_for(args.restart_clients, args, fd_limit) as fleet:
        figures = run_restart(
            port=topo["proxy_port"],
            supervisor=topo["api"].pid,
            fleet=fleet,
            store=store,
            redis_url=topo["redis_url"],
            args=restart_args,
        )
    figures["rate"] = args.restart_rate
    serving_workers(topo["api"].pid, args.processes, topo["redis_port"])
    return figures


# --- report ------------------------------------------------------------------------------------


def _paired_row(what: str, phase: dict[str, Any], within_ms: float, cmd: str) -> Row:
    """Median of each side's per-round p99, their difference (the target), and the median
    of the per-round differences beside it."""
    median = phase["median_p99_ms"]
    diff = round(median["proxied"] - median["direct"], 2)
    return Row(
        f"{what}, median of {len(phase['rounds'])} rounds: direct / proxied "
        "(difference; median of per-round differences)",
        f"{median['direct']} / {median['proxied']} ms ({diff:+} ms; "
        f"{phase['median_p99_ms_difference']:+} ms)",
        f"proxied within +{within_ms:g} ms",
        diff <= within_ms,
        cmd,
    )


def table(figures: dict[str, Any]) -> list[Row]:
    cmd = command_for(SCRIPT)
    rows: list[Row] = []
    sse = figures.get("sse", {})
    if "median_p99_ms" in sse:
        rows.append(
            _paired_row(
                f"SSE delivery p99, {sse['clients_per_side']:,} clients through nginx and as many "
                "direct",
                sse,
                2.0,
                cmd,
            )
        )
    up = figures.get("upload", {})
    if "median_p99_ms" in up:
        rows.append(
            _paired_row(
                f"1 MB upload → 202 p99, {up['uploads_per_side_per_round']} per side per round",
                up,
                5.0,
                cmd,
            )
        )
    big = figures.get("big", {})
    if "nginx_rss_growth_kb" in big:
        rows.append(
            Row(
                f"{big['upload_mb']} MB upload through nginx: answer, seconds; nginx RSS growth; "
                "client_body_temp",
                f"{big['status']} in {big['seconds']} s; "
                f"{big['nginx_rss_growth_kb'] / 1024:.1f} MB; "
                f"{big['client_body_temp_max_bytes']} B",
                "202, not buffered whole (flat)",
                big["status"] == 202
                and big["nginx_rss_growth_kb"] < 16 * 1024
                and big["client_body_temp_max_bytes"] == 0,
                cmd,
            )
        )
        over = big["oversized"]
        rows.append(
            Row(
                f"Content-Length {over['announced_mb']} MB: nginx's answer, body bytes sent first",
                f"{over['status_line']} in {over['ms_to_answer']} ms; "
                f"{over['body_bytes_sent_before_answer']:,} B",
                "413 JSON before the body ends",
                "413" in over["status_line"] and over["body_is_json"],
                cmd,
            )
        )
    restart = figures.get("restart", {})
    if "reconnects" in restart:
        once = restart["load"]["exactly_once"]
        ok = (
            not restart["reconnect_failures"]
            and once["events_lost"] == 0
            and once["events_duplicated"] == 0
            and restart["held_at_end"] == restart["clients"]
        )
        rows.append(
            Row(
                f"Rolling restart (SIGHUP) under {restart['clients']:,} clients through nginx: "
                "reconnects, non-200, lost / duplicated, all resumed after",
                f"{restart['reconnects']:,}, {sum(restart['reconnect_failures'].values())}, "
                f"{once['events_lost']} / {once['events_duplicated']}, "
                f"{(restart['reconnect_ms_max'] or 0) / 1000:.1f} s",
                "0 lost, 0 non-200",
                ok,
                cmd,
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--processes", type=int, default=2, help="API processes")
    parser.add_argument("--sse-clients", type=int, default=4000, help="per side; 0 skips")
    parser.add_argument("--jobs", type=int, default=1000, help="jobs the clients spread over")
    parser.add_argument("--rate", type=float, default=200.0, help="events written per second")
    parser.add_argument("--seconds", type=float, default=3.0, help="load per SSE round")
    parser.add_argument("--uploads", type=int, default=30, help="1 MB uploads per side per round")
    parser.add_argument("--big-mb", type=float, default=100.0, help="0 skips the big upload")
    parser.add_argument("--restart-clients", type=int, default=2000, help="0 skips")
    parser.add_argument("--restart-rate", type=float, default=1000.0, help="events/s, restart")
    parser.add_argument("--restart-after", type=float, default=3.0)
    parser.add_argument("--restart-load-seconds", type=float, default=15.0)
    parser.add_argument("--connect-timeout", type=float, default=30.0)
    parser.add_argument("--clients-per-proc", type=int, default=2500)
    parser.add_argument("--drain-limit", type=float, default=60.0)
    parser.add_argument("--quiet-timeout", type=float, default=900.0)
    args = parser.parse_args()

    fd_limit = raise_fd_limit()
    figures: dict[str, Any] = {"processes": args.processes, "proxy_addr": PROXY_ADDR}
    with tempfile.TemporaryDirectory(prefix="yousync-deploy-") as tmp:
        figures["background_cpu_cores"] = wait_for_quiet(timeout=args.quiet_timeout)
        with topology(Path(tmp), args.processes) as topo:
            phases = (
                ("upload", args.uploads > 0, lambda: run_uploads(topo, args)),
                ("big", args.big_mb > 0, lambda: run_big(topo, args)),
                ("sse", args.sse_clients > 0, lambda: run_sse(topo, args, fd_limit)),
                (
                    "restart",
                    args.restart_clients > 0,
                    lambda: run_rolling_restart(topo, args, fd_limit),
                ),
            )
            for name, wanted, run in phases:
                if not wanted:
                    continue
                try:
                    figures[name] = run()
                except (TimeoutError, OSError, RuntimeError, AssertionError) as exc:
                    print(f"[{name}] failed: {exc!r}", flush=True)
                    figures[name] = {"error": repr(exc)}
    path = write_result("deploy", figures, table(figures))
    print(json.dumps([row for row in json.loads(path.read_text())["rows"]], indent=2))
    write_summary()


if __name__ == "__main__":
    main()
