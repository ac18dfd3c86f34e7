"""Pipeline throughput and our own cost per job.

1. Jobs per minute end to end (upload → 202 → worker: prepare, S3, analysis, store →
   `completed`) with 1 and with 2 Celery workers (each `--concurrency=1`), a 1 s WAV per job
   and a fast analysis (ANALYSIS_MIN_SECONDS=0), on the real stack: moto S3, the analysis
   server, Redis. Every job's audio differs, so the identical-upload shortcut never answers.
2. CPU our code spends per job outside S3 and the analysis: `Pipeline` runs in this process
   against a real Redis, with the storage and the analysis client replaced by the tests'
   stand-ins (tests/helpers/fakes.py) that only call their progress callbacks (10
   byte-progress calls, 20 analysis-progress calls) — what remains is the Redis writes (one
   Lua script per progress write), progress throttling, ETA bookkeeping, stage markers and
   telemetry. Measured with `time.process_time()` over 200 jobs, three times: with the
   product's progress throttle (the stand-ins report instantly, so only the forced
   stage-boundary writes remain: the fixed cost of a job), with the throttle off (every
   callback that raises the percent is written: the most writes these callbacks can cause),
   and the latter with real preparation (pydub + ffmpeg on the 1 s WAV, ffmpeg's CPU shown
   apart). The difference of the first two gives the cost of one progress event, so the cost
   of any job is the fixed cost plus its events × that.

Why: the design promises the API answers at once and the worker's overhead is small next to
the real work; these numbers say how many jobs a worker clears and what one job costs us.

Run: `make bench`, or alone from the repository root: .venv/bin/python -m
bench.bench_pipeline (about 2 minutes).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import struct
import tempfile
import time
import wave
from pathlib import Path
from typing import Any
from unittest import mock

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
from bench.summary import write_summary
from devtools import stack

SCRIPT = Path(__file__).name
END_TO_END_JOBS = 40
IN_PROCESS_JOBS = 200
TOKEN = "bench-pipeline"


def wav_1s(seed: int, rate: int = 44100) -> bytes:
    """One second of a tone whose pitch depends on `seed`, so every upload hashes differently
    (the API answers an identical upload of the same token from its earlier result)."""
    frequency = 220.0 + seed
    frames = b"".join(
        struct.pack("<h", int(8000 * math.sin(2 * math.pi * frequency * i / rate)))
        for i in range(rate)
    )
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(frames)
    return buffer.getvalue()


def run_jobs(client: httpx.Client, api_url: str, seeds: range) -> list[float]:
    """Submit one job per seed at once, then wait for each; returns submit→completed seconds."""
    submitted = []
    for seed in seeds:
        started = time.perf_counter()
        response = client.post(
            f"{api_url}/tokens/{TOKEN}/upload-audio", files={"file": (f"{seed}.wav", wav_1s(seed))}
        )
        if response.status_code != 202:
            raise RuntimeError(f"upload answered {response.status_code}: {response.text}")
        submitted.append((started, response.json()["result_url"]))
    durations = []
    for started, result_url in submitted:
        result = client.get(f"{api_url}{result_url}?wait=60", timeout=70).json()
        if result["status"] != "completed":
            raise RuntimeError(f"job ended {result['status']}: {result.get('error')}")
        durations.append(time.perf_counter() - started)
    return durations


def end_to_end(workers: int) -> dict[str, Any]:
    with running_stack(workers=workers) as bench, httpx.Client(timeout=120) as client:
        run_jobs(client, bench.api_url, range(10_000, 10_000 + 2 * workers))  # warm-up
        foreign = ForeignLoad()
        started = time.perf_counter()
        durations = run_jobs(client, bench.api_url, range(END_TO_END_JOBS))
        elapsed = time.perf_counter() - started
    return {
        "workers": workers,
        "worker_concurrency": 1,
        "jobs": END_TO_END_JOBS,
        "seconds": round(elapsed, 2),
        "jobs_per_min": round(END_TO_END_JOBS / elapsed * 60, 1),
        "job_seconds_p50": round(percentile(durations, 50), 2),
        "job_seconds_max": round(max(durations), 2),
        "foreign_cpu_cores": foreign.cores(),
    }


def in_process(
    redis_url: str, spool: Path, *, real_prepare: bool, throttled: bool = False
) -> dict[str, Any]:
    from tests.helpers.fakes import FakeAnalyzer, FakeObjectStore, FakePreparer
    from yousync.core.config import Settings
    from yousync.core.jobs import JobStore
    from yousync.worker.pipeline import Pipeline

    # Unthrottled, every callback that raises the percent is written (the most a job can
    # cause); throttled uses the product's default interval, and as the stand-ins report
    # instantly only the forced stage-boundary writes remain: the fixed cost of a job.
    interval = {} if throttled else {"progress_min_interval_seconds": 0}
    settings = Settings(redis_url=redis_url, spool_dir=spool, **interval)
    client = redis.Redis.from_url(redis_url)
    pipeline = Pipeline(
        settings=settings,
        store=JobStore(client, settings),
        # Progress only: 10 byte-progress calls per upload, 20 analysis-progress calls.
        storage=FakeObjectStore(progress_steps=10),
        analysis=FakeAnalyzer(progress_steps=20),
    )
    audio = wav_1s(0)
    job_ids = create_jobs(redis_url, TOKEN, IN_PROCESS_JOBS + 5)
    for job_id in job_ids:
        (spool / job_id).write_bytes(audio)
        pipeline.store.set_markers(
            job_id, spool_path=str(spool / job_id), source_format="wav", size_bytes=len(audio)
        )
    scripts_before = _script_calls(client)
    cpu: list[float] = []
    wall: list[float] = []
    children_before = os.times()
    foreign = ForeignLoad()
    patch = (
        contextlib.nullcontext()
        if real_prepare
        else mock.patch("yousync.worker.pipeline.audio.prepare", FakePreparer())
    )
    with patch:
        for index, job_id in enumerate(job_ids):
            started_cpu, started_wall = time.process_time(), time.perf_counter()
            pipeline.begin_delivery(job_id, worker_pid=os.getpid())
            status = pipeline.run(job_id)
            pipeline.end_delivery(job_id)
            if status != "completed":
                raise RuntimeError(f"job {job_id} ended {status}")
            if index >= 5:  # the first jobs warm caches and imports
                cpu.append(time.process_time() - started_cpu)
                wall.append(time.perf_counter() - started_wall)
    children = os.times()
    scripts = (_script_calls(client) - scripts_before) / len(job_ids)
    children_cpu = (
        children.children_user
        + children.children_system
        - children_before.children_user
        - children_before.children_system
    )
    return {
        "jobs": len(cpu),
        "prepare": "real (pydub + ffmpeg, 1 s WAV)" if real_prepare else "stubbed",
        "throttled": throttled,
        "cpu_ms_per_job_p50": round(percentile([c * 1000 for c in cpu], 50), 2),
        "cpu_ms_per_job_mean": round(sum(cpu) * 1000 / len(cpu), 2),
        "wall_ms_per_job_p50": round(percentile([w * 1000 for w in wall], 50), 2),
        "subprocess_cpu_ms_per_job": round(max(children_cpu, 0.0) * 1000 / len(job_ids), 2),
        "redis_scripts_per_job": round(scripts, 1),
        "foreign_cpu_cores": foreign.cores(),
    }


def _script_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(
        int(stats.get(name, {}).get("calls", 0)) for name in ("cmdstat_evalsha", "cmdstat_eval")
    )


def table(figures: dict[str, Any]) -> list[Row]:
    cmd = command_for(SCRIPT)
    rows = [
        Row(
            f"Jobs/min end to end, {run['workers']} worker(s) × concurrency 1, 1 s WAV, "
            f"fast analysis ({run['jobs']} jobs)",
            f"{run['jobs_per_min']:.0f}/min (job p50 {run['job_seconds_p50']:.1f} s)",
            "",
            None,
            cmd,
        )
        for run in figures["end_to_end"]
    ]
    stubbed, real = figures["cpu_per_job"]["stubbed"], figures["cpu_per_job"]["real"]
    fixed = figures["cpu_per_job"]["throttled"]
    extra_writes = stubbed["redis_scripts_per_job"] - fixed["redis_scripts_per_job"]
    per_write = (stubbed["cpu_ms_per_job_mean"] - fixed["cpu_ms_per_job_mean"]) / extra_writes
    rows.append(
        Row(
            "CPU of our code per job outside S3 and analysis, default progress throttle, "
            f"prepare stubbed (stage-boundary writes only: {fixed['redis_scripts_per_job']:.0f} "
            "Redis scripts/job)",
            f"{fixed['cpu_ms_per_job_p50']:.1f} ms (mean {fixed['cpu_ms_per_job_mean']:.1f})",
            "≤ 10 ms",
            fixed["cpu_ms_per_job_p50"] <= 10,
            cmd,
        )
    )
    rows.append(
        Row(
            "… each further progress event (one Redis script; ≤ 1 per percent, ≤ 10/s)",
            f"{per_write:.2f} ms",
            "",
            None,
            cmd,
        )
    )
    rows.append(
        Row(
            "… the same with the throttle off (every progress callback written; "
            f"{stubbed['redis_scripts_per_job']:.0f} Redis scripts/job)",
            f"{stubbed['cpu_ms_per_job_p50']:.1f} ms (mean {stubbed['cpu_ms_per_job_mean']:.1f})",
            "≤ 10 ms",
            stubbed["cpu_ms_per_job_p50"] <= 10,
            cmd,
        )
    )
    rows.append(
        Row(
            "… with real preparation of a 1 s WAV (in-process / ffmpeg subprocesses)",
            f"{real['cpu_ms_per_job_p50']:.1f} ms / {real['subprocess_cpu_ms_per_job']:.1f} ms",
            "",
            None,
            cmd,
        )
    )
    return rows


def main() -> None:
    figures: dict[str, Any] = {"background_cpu_cores": wait_for_quiet()}
    figures["end_to_end"] = [end_to_end(workers) for workers in (1, 2)]
    print("end to end:", figures["end_to_end"], flush=True)
    with tempfile.TemporaryDirectory(prefix="yousync-pipeline-") as tmp:
        workdir = Path(tmp)
        redis_server = stack.redis_proc(workdir).start()
        try:
            redis_url = f"redis://127.0.0.1:{redis_server.name.split(':')[1]}/0"
            # Telemetry inside the pipeline reads the process settings: point them here too.
            os.environ["REDIS_URL"] = redis_url
            from yousync.core.config import get_settings

            get_settings.cache_clear()
            spool = workdir / "spool"
            spool.mkdir()
            figures["cpu_per_job"] = {
                "throttled": in_process(redis_url, spool, real_prepare=False, throttled=True),
                "stubbed": in_process(redis_url, spool, real_prepare=False),
                "real": in_process(redis_url, spool, real_prepare=True),
            }
        finally:
            redis_server.stop()
    print("in process:", figures["cpu_per_job"], flush=True)
    path = write_result("pipeline", figures, table(figures))
    print(path.read_text())
    write_summary()


if __name__ == "__main__":
    main()
