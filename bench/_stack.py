"""A private stack for one benchmark run (the same launchers the tests use)."""

from __future__ import annotations

import contextlib
import json
import platform
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
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
    *, workers: int = 1, analysis_min_seconds: float = 0.0, max_upload_mb: int = 200
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


def write_result(name: str, figures: dict[str, object]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {
        "benchmark": name,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
        "figures": figures,
    }
    path.write_text(json.dumps(payload, indent=2))
    return path
