"""A worker with production's flags (`--prefetch-multiplier=1 --max-memory-per-child=…`) loses no
job when its children are recycled or when it is restarted gracefully mid-job.

A real worker, API and Redis of their own (a mini stack: the session's worker must not take these
jobs), the session's S3 and analysis server (which spends at least a second analysing, so a job is
caught mid-way). The memory cap is tiny (1000 KiB: every child exceeds it after its first task), so
each job is followed by a child being replaced, as a production child that grew past 300 MB is.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devtools import stack
from tests.helpers.api import upload_accepted
from tests.helpers.audio import wav_bytes
from tests.helpers.mini_stack import MiniStack, mini_stacks
from tests.helpers.wait import wait_until

TINY_MAX_MEMORY_KIB = 1000


@pytest.fixture(scope="module")
def recycling(
    stack_env: dict[str, str], workdir: Path, analysis_service: stack.Proc
) -> Iterator[MiniStack]:
    """One child (so the next job can only go to its replacement), production's flags, the
    tiny memory cap."""
    with mini_stacks(stack_env, workdir) as make:
        yield make(
            concurrency=1,
            worker_args=(
                "--prefetch-multiplier=1",
                f"--max-memory-per-child={TINY_MAX_MEMORY_KIB}",
            ),
        )


def job(mini: MiniStack, job_id: str) -> dict[str, str]:
    return dict(mini.redis.hgetall(f"yousync:job:{job_id}"))


def completed(mini: MiniStack, body: dict[str, str]) -> dict[str, str]:
    """Wait (bounded, server-side) for the job's end; its record."""
    final = httpx.get(f"{mini.api_url}{body['result_url']}", params={"wait": 30}, timeout=40)
    assert final.json()["status"] == "completed", final.text
    return job(mini, body["job_id"])


def take(freq: float) -> bytes:
    """A take of its own (identical uploads of a token are answered from the first job)."""
    return wav_bytes(1.0, freq=freq)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_exited(pid: int) -> None:
    wait_until(lambda: not alive(pid), timeout=15, what=f"child {pid} exiting")


def test_worker_with_a_tiny_max_memory_per_child_then_each_job_completes_and_its_child_is_replaced(
    recycling: MiniStack, token_id: str
) -> None:
    worker = recycling.procs[1]
    records = []
    for freq in (330.0, 349.0):
        body = upload_accepted(recycling.api_url, token_id, take(freq))
        pid = int(completed(recycling, body)["worker_pid"])
        wait_exited(pid)
        records.append(job(recycling, body["job_id"]))
    first, second = records

    assert first["worker_pid"] != second["worker_pid"], "the second job ran in a new child"
    # Each child left after its task, not by crashing in it: every delivery ended cleanly.
    assert first["deliveries"] == second["deliveries"] == "0"
    assert worker.popen is not None and worker.popen.poll() is None, "the worker itself stayed"


def test_worker_sigterm_mid_job_then_the_job_completes_before_it_exits_and_a_new_worker_goes_on(
    recycling: MiniStack, token_id: str
) -> None:
    worker = recycling.procs[1]
    body = upload_accepted(recycling.api_url, token_id, take(392.0))
    wait_until(
        lambda: job(recycling, body["job_id"]).get("stage") == "analyzing",
        timeout=30,
        interval=0.01,
        what="the job analysing",
    )
    # Celery's warm shutdown, as a supervisor stops or restarts it: SIGTERM to the main process
    # only (systemd KillMode=mixed); a SIGTERM to the children as well would kill the job's.
    os.kill(worker.pid, signal.SIGTERM)
    at_signal = job(recycling, body["job_id"])["status"]
    assert worker.popen is not None
    exit_code = worker.popen.wait(60)
    at_exit = job(recycling, body["job_id"])

    assert at_signal == "processing", "the signal came mid-job"
    assert exit_code == 0, worker.log_tail()
    assert at_exit["status"] == "completed", "the worker exited before its job was done"
    assert "Warm shutdown" in worker.log_path.read_text(errors="replace")

    # The supervisor starts it again; the next job goes to the new worker.
    with contextlib.suppress(FileNotFoundError):
        Path(worker.env["YOUSYNC_WORKER_READY_FILE"]).unlink()
    old_pid = worker.pid
    worker.start()
    following = completed(recycling, upload_accepted(recycling.api_url, token_id, take(440.0)))

    assert worker.pid != old_pid
    assert following["worker_pid"] != at_exit["worker_pid"]
    assert not alive(int(at_exit["worker_pid"])), "the old worker's child is gone"
