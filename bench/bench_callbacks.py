"""Completion callbacks: what they cost the pipeline, and how soon a receiver hears of a job end.

1. Jobs per minute end to end with callbacks on vs off, in one run: one stack (1 worker ×
   concurrency 1, 1 s WAV, fast analysis, as bench_pipeline), plus the callbacks worker
   (threads, queue `callbacks`), Beat sending the drain every second, and a receiver. Rounds
   alternate: `on` uploads name the receiver as their own `callback_url` (allowlisted
   127.0.0.3), `off` uploads name none; the machine's drifting load lands on both alike. Beat's
   drain runs in both (it runs wherever callbacks are configured): `off` measures a deployment
   with callbacks configured and a job that has none. A round ends when its jobs completed and,
   outside the timed window, its callbacks arrived.
2. Latency of 1,000 job ends: jobs ended through the product's store at 100 per second (the
   end written as a worker writes it, CALLBACK_URL = the receiver), delivered by the real Beat
   and callbacks worker; per delivery, receipt time minus the terminal event's `updated_at`.
   These ends are written by the benchmark, not by a worker, so only Beat's drain (every
   CALLBACK_TICK_SECONDS, 1 s) sends them: the latency of ends that no worker writes (cancel,
   deduplicated uploads, Beat's stuck-job sweep). The `on` rounds of part 1 give the other
   figure: ends written by the worker, which sends a drain right after its final write.

Run: `make bench`, or alone from the repository root: .venv/bin/python -m bench.bench_callbacks
(about 3 minutes).
"""

from __future__ import annotations

import base64
import json
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import redis

from bench._jobs import create_jobs
from bench._stack import (
    ForeignLoad,
    Row,
    command_for,
    percentile,
    running_stack,
    wait_for_quiet,
    write_result,
)
from bench.bench_pipeline import wav_1s
from bench.summary import write_summary
from devtools import stack
from yousync.core.config import Settings
from yousync.core.jobs import JobStore

SCRIPT = Path(__file__).name
TOKEN = "bench-callbacks"
ROUND_JOBS = 20
ROUNDS_PER_MODE = 4
LATENCY_ENDS = 1000
ENDS_PER_SECOND = 100
SECRET = "whsec_" + base64.b64encode(b"bench-callbacks-secret").decode()


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # the default backlog (5) drops connects of a 16-wide drain


class Receiver:
    """Records each callback's arrival time by `webhook-id` (the body kept for `updated_at`)."""

    def __init__(self, host: str) -> None:
        self.arrivals: dict[str, tuple[float, bytes]] = {}
        self.duplicates = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real receiver would

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                arrived = time.time()
                with receiver._lock:
                    msg_id = self.headers["webhook-id"]
                    if msg_id in receiver.arrivals:
                        receiver.duplicates += 1
                    else:
                        receiver.arrivals[msg_id] = (arrived, body)
                self.send_response(204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = _Server((host, stack.free_port()), Handler)
        self._server.daemon_threads = True
        self.url = f"http://{host}:{self._server.server_address[1]}/hook"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def count(self) -> int:
        with self._lock:
            return len(self.arrivals)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def callback_stack() -> Iterator[tuple[Any, dict[str, str], Receiver, Receiver]]:
    own = Receiver("127.0.0.3")  # uploads' own target (allowlisted address)
    # The latency part's target, set as CALLBACK_URL by its writer only (the job-state script
    # takes the operator's URL from whoever writes the end): the stack's processes have none,
    # so `off` jobs owe no callback.
    operator = Receiver("127.0.0.1")
    extra = {
        "CALLBACK_SECRET": SECRET,
        "CALLBACK_ALLOWED_HOSTS": "127.0.0.3",
        "CALLBACK_TICK_SECONDS": "1",
    }
    try:
        with running_stack(workers=1, extra_env=extra) as bench:
            env = {k: v for k, v in bench.procs["api"].env.items() if k != "PYTHONMALLOC"}
            bench.procs["callbacks"] = stack.callbacks_worker_proc(env, bench.workdir).start()
            bench.procs["beat"] = stack.beat_proc(env, bench.workdir).start()
            yield bench, env, own, operator
    finally:
        own.close()
        operator.close()


def run_round(client: httpx.Client, api_url: str, seeds: range, callback_url: str | None) -> float:
    """Upload one job per seed at once, wait for all to complete; returns the seconds."""
    data = {"callback_url": callback_url} if callback_url else None
    started = time.perf_counter()
    results = []
    for seed in seeds:
        response = client.post(
            f"{api_url}/tokens/{TOKEN}/upload-audio",
            files={"file": (f"{seed}.wav", wav_1s(seed))},
            data=data,
        )
        if response.status_code != 202:
            raise RuntimeError(f"upload answered {response.status_code}: {response.text}")
        results.append(response.json()["result_url"])
    for result_url in results:
        result = client.get(f"{api_url}{result_url}?wait=60", timeout=70).json()
        if result["status"] != "completed":
            raise RuntimeError(f"job ended {result['status']}: {result.get('error')}")
    return time.perf_counter() - started


def throughput(bench: Any, own: Receiver) -> dict[str, Any]:
    seconds: dict[str, list[float]] = {"on": [], "off": []}
    foreign = ForeignLoad()
    with httpx.Client(timeout=120) as client:
        run_round(client, bench.api_url, range(50_000, 50_004), own.url)  # warm-up
        stack.poll(lambda: own.count() >= 4, timeout=60, what="warm-up callbacks")
        seed = 0
        for index in range(2 * ROUNDS_PER_MODE):
            mode = "on" if index % 2 == 0 else "off"
            expected = own.count() + ROUND_JOBS
            seeds = range(seed, seed + ROUND_JOBS)
            seed += ROUND_JOBS
            seconds[mode].append(
                run_round(client, bench.api_url, seeds, own.url if mode == "on" else None)
            )
            if mode == "on":
                stack.poll(
                    lambda wanted=expected: own.count() >= wanted,  # type: ignore[misc]
                    timeout=60,
                    what="round's callbacks",
                )
            print(mode, f"{ROUND_JOBS / seconds[mode][-1] * 60:.1f} jobs/min", flush=True)
    rates = {mode: [ROUND_JOBS / s * 60 for s in values] for mode, values in seconds.items()}
    delays = end_to_receipt(own)
    on, off = statistics.median(rates["on"]), statistics.median(rates["off"])
    return {
        "round_jobs": ROUND_JOBS,
        "rounds_per_mode": ROUNDS_PER_MODE,
        "jobs_per_min_on": round(on, 1),
        "jobs_per_min_off": round(off, 1),
        "rounds_on": [round(r, 1) for r in rates["on"]],
        "rounds_off": [round(r, 1) for r in rates["off"]],
        "difference_pct": round((off - on) / off * 100, 1),
        "duplicates": own.duplicates,
        # The `on` jobs' ends, written by the worker, which sends a drain right after.
        "worker_ends": len(delays),
        "worker_end_latency_p50_ms": round(percentile(delays, 50) * 1000, 1),
        "worker_end_latency_p99_ms": round(percentile(delays, 99) * 1000, 1),
        "foreign_cpu_cores": foreign.cores(),
    }


def end_to_receipt(receiver: Receiver) -> list[float]:
    """Per callback received: its arrival minus the terminal event's `updated_at` (seconds)."""
    delays = []
    for arrived, body in receiver.arrivals.values():
        ended = datetime.fromisoformat(json.loads(body)["updated_at"].replace("Z", "+00:00"))
        delays.append(arrived - ended.timestamp())
    return delays


def latency(bench: Any, env: dict[str, str], operator: Receiver) -> dict[str, Any]:
    settings = Settings(redis_url=bench.redis_url, callback_url=operator.url)
    job_ids = create_jobs(bench.redis_url, TOKEN, LATENCY_ENDS)
    store = JobStore(redis.Redis.from_url(bench.redis_url), settings)
    foreign = ForeignLoad()
    started = time.perf_counter()
    for index, job_id in enumerate(job_ids):
        pause = started + index / ENDS_PER_SECOND - time.perf_counter()
        if pause > 0:
            time.sleep(pause)  # pacing the writer, not waiting for a result
        store.update(job_id, TOKEN, status="completed", progress=100, stage="done", message="m")
    written = time.perf_counter() - started
    stack.poll(
        lambda: operator.count() >= LATENCY_ENDS, timeout=120, what="every callback", interval=0.2
    )
    delays = end_to_receipt(operator)
    return {
        "job_ends": LATENCY_ENDS,
        "ends_per_second": round(LATENCY_ENDS / written, 1),
        "tick_seconds": float(env["CALLBACK_TICK_SECONDS"]),
        "delivered": len(delays),
        "duplicates": operator.duplicates,
        "latency_p50_ms": round(percentile(delays, 50) * 1000, 1),
        "latency_p99_ms": round(percentile(delays, 99) * 1000, 1),
        "latency_max_ms": round(max(delays) * 1000, 1),
        "foreign_cpu_cores": foreign.cores(),
    }


def table(figures: dict[str, Any]) -> list[Row]:
    cmd = command_for(SCRIPT)
    run, lat = figures["throughput"], figures["latency"]
    return [
        Row(
            "Jobs/min end to end with callbacks on vs off (1 worker × concurrency 1, 1 s WAV, "
            f"{run['rounds_per_mode']} alternating rounds of {run['round_jobs']} jobs each)",
            f"{run['jobs_per_min_on']:.0f} vs {run['jobs_per_min_off']:.0f}/min "
            f"({run['difference_pct']:+.1f} %)",
            "≤ 5 % difference",
            abs(run["difference_pct"]) <= 5,
            cmd,
        ),
        Row(
            f"Job end → receipt, ends written by the worker, which sends a drain at once "
            f"({run['worker_ends']} jobs of the `on` rounds): p50 / p99",
            f"{run['worker_end_latency_p50_ms']:.0f} / {run['worker_end_latency_p99_ms']:.0f} ms",
            "",
            None,
            cmd,
        ),
        Row(
            f"Job end → receipt, {lat['job_ends']} ends at {lat['ends_per_second']:.0f}/s, "
            f"drain every {lat['tick_seconds']:g} s: p50 / p99",
            f"{lat['latency_p50_ms']:.0f} / {lat['latency_p99_ms']:.0f} ms "
            f"({lat['delivered']} delivered, {lat['duplicates']} duplicates)",
            "",
            None,
            cmd,
        ),
    ]


def main() -> None:
    figures: dict[str, Any] = {"background_cpu_cores": wait_for_quiet()}
    with callback_stack() as (bench, env, own, operator):
        figures["throughput"] = throughput(bench, own)
        print("throughput:", figures["throughput"], flush=True)
        figures["latency"] = latency(bench, env, operator)
        print("latency:", figures["latency"], flush=True)
    path = write_result("callbacks", figures, table(figures))
    print(path.read_text())
    write_summary()


if __name__ == "__main__":
    main()
