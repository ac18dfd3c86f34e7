"""Where the API's memory per SSE client goes: the same idle clients against seven servers, from
the bare floor up to the product, on the same uvicorn (one process, uvloop + httptools, the
product's flags):

  raw ASGI             uvicorn's per-connection objects, one task, the socket (the floor)
  StreamingResponse    + Starlette, an async generator waiting on a queue
  sse-starlette        + EventSourceResponse's task group (stream, ping, disconnect and
                         shutdown watchers) with the product's ping and send timeout
  CompactEventSource   the same loops under the product's lighter supervisor (the request's
                         task + three plain watcher tasks instead of four anyio tasks)
  FastAPI + Streaming  a bare FastAPI app (no middleware or dependencies) with Starlette's
                         StreamingResponse: the framework's own cost per open response
  FastAPI + Compact    the same app with CompactEventSourceResponse
  YouSync API          + FastAPI routing and dependencies, the request-log and CORS
                         middleware, the hub subscription and the Stream replay

Per server: RSS and tracked objects before and with N idle clients (KB and objects per
client), and how long one full garbage collection takes with them connected — the pause every
stream on that process waits out whenever Python runs a generation-2 collection.

Run: `make bench`, or alone from the repository root: .venv/bin/python -m
bench.bench_sse_memory [--clients 5000] (about 1.5 minutes).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench._gc_probe import request_snapshot
from bench._jobs import create_jobs
from bench._stack import (
    ForeignLoad,
    Row,
    command_for,
    raise_fd_limit,
    rss_kb,
    wait_for_quiet,
    write_result,
)
from bench.bench_sse_fanout import HOST, TOKEN, ClientFleet, uvicorn_server
from bench.summary import write_summary
from devtools import stack

SCRIPT = Path(__file__).name
VARIANTS = [
    ("raw ASGI on uvicorn", "bench.sse_floor_apps:raw_app"),
    ("Starlette StreamingResponse", "bench.sse_floor_apps:streaming_app"),
    ("Starlette + sse-starlette EventSourceResponse", "bench.sse_floor_apps:sse_app"),
    ("Starlette + CompactEventSourceResponse", "bench.sse_floor_apps:compact_sse_app"),
    ("FastAPI + StreamingResponse", "bench.sse_floor_apps:fastapi_streaming_app"),
    ("FastAPI + CompactEventSourceResponse", "bench.sse_floor_apps:fastapi_compact_app"),
    ("YouSync API (main:app)", "bench._gc_logged_api:app"),
]
TOP_TYPES = 15


def measure(
    label: str, app: str, clients: int, fleet: ClientFleet, env: dict[str, str], workdir: Path
) -> dict[str, Any]:
    gc_log = workdir / f"gc-{app.rsplit(':', 1)[1]}.log"
    server = uvicorn_server(
        "server", app, {**env, "BENCH_GC_LOG": str(gc_log)}, stack.REPO_ROOT, workdir
    )
    base = f"http://{HOST}:{server.name.split(':')[1]}"
    port = int(server.name.split(":")[1])

    def poke() -> None:
        httpx.get(f"{base}/healthz", timeout=30)

    try:
        if app.startswith("bench._gc_logged_api"):
            job_ids = create_jobs(env["REDIS_URL"], TOKEN, clients)
            paths = [f"/tokens/analysis-progress/{job_id}" for job_id in job_ids]
        else:
            paths = [f"/stream/{index}" for index in range(clients)]
        fleet.connect(port, paths[:20], 20)  # warm-up: lazy imports and first-request caches
        fleet.close()
        time.sleep(1.0)
        before = request_snapshot(server.pid, gc_log, poke)
        rss_before = rss_kb(server.pid)
        foreign = ForeignLoad()
        held = fleet.connect(port, paths, 500)["held"]
        time.sleep(2.0)
        rss_held = rss_kb(server.pid)
        after = request_snapshot(server.pid, gc_log, poke)
        foreign_cores = foreign.cores()
        fleet.close()
    finally:
        server.stop()
    grown = {name: count - before["types"].get(name, 0) for name, count in after["types"].items()}
    top = sorted(grown.items(), key=lambda item: -item[1])[:TOP_TYPES]
    print(f"{label}: {(rss_held - rss_before) / max(held, 1):.1f} KB/client", flush=True)
    return {
        "app": app,
        "clients": clients,
        "held": held,
        "rss_before_kb": rss_before,
        "rss_held_kb": rss_held,
        "rss_per_client_kb": round((rss_held - rss_before) / max(held, 1), 1),
        "objects_per_client": round((after["objects"] - before["objects"]) / max(held, 1), 1),
        "full_gc_ms_before": before["full_gc_ms"],
        "full_gc_ms_held": after["full_gc_ms"],
        "top_types_per_client": {name: round(count / max(held, 1), 2) for name, count in top},
        "foreign_cpu_cores": foreign_cores,
    }


def table(figures: dict[str, Any]) -> list[Row]:
    cmd = command_for(SCRIPT)
    rows = []
    for label, result in figures["variants"].items():
        rows.append(
            Row(
                f"RSS per idle stream, {label} (N={result['clients']:,})",
                f"{result['rss_per_client_kb']:.1f} KB, {result['objects_per_client']:.0f} "
                f"objects; full GC {result['full_gc_ms_held']:.0f} ms",
                "≤ 20 KB" if label.startswith("YouSync") else "",
                result["rss_per_client_kb"] <= 20 if label.startswith("YouSync") else None,
                cmd,
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=5000)
    args = parser.parse_args()
    raise_fd_limit()
    figures: dict[str, Any] = {"clients": args.clients, "variants": {}}
    with tempfile.TemporaryDirectory(prefix="yousync-ssemem-") as tmp:
        workdir = Path(tmp)
        redis_server = stack.redis_proc(workdir).start()
        fleet = ClientFleet(1)
        try:
            env = {
                "ENVIRONMENT": "test",
                "REDIS_URL": f"redis://{HOST}:{redis_server.name.split(':')[1]}/0",
                "S3_ENDPOINT_URL": "http://127.0.0.1:9",
                "ANALYSIS_SERVER_URL": "http://127.0.0.1:9",
                "SPOOL_DIR": str(workdir),
                "STALL_SECONDS": "3600",
            }
            for label, app in VARIANTS:
                quiet = wait_for_quiet()
                figures["variants"][label] = measure(label, app, args.clients, fleet, env, workdir)
                figures["variants"][label]["background_cpu_cores"] = quiet
        finally:
            fleet.stop()
            redis_server.stop()
    path = write_result("sse_memory", figures, table(figures))
    print(path.read_text())
    write_summary()


if __name__ == "__main__":
    main()
