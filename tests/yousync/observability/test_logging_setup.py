"""Structured logs: the line format itself, and one job followed by grepping its id through the
real API's and worker's logs (request lines, task start/end, every stage)."""

from __future__ import annotations

import json
import logging

import httpx

from devtools import stack
from tests.helpers import sse
from tests.helpers.audio import wav_bytes
from yousync.core.stages import TIMED_STAGES
from yousync.observability.logging_setup import JOB_ID, StructuredFormatter, job_id_in

JOB = "0b6f1c52-8a0e-4c7d-9f57-2f8e8f6f0a11"


def record(msg: str, **extra: object) -> logging.LogRecord:
    made = logging.makeLogRecord({"name": "yousync.test", "levelname": "INFO", "msg": msg})
    for key, value in extra.items():
        setattr(made, key, value)
    return made


def test_formatter_when_text_then_one_logfmt_line_with_extras_and_context_job_id() -> None:
    token = JOB_ID.set(JOB)
    try:
        line = StructuredFormatter(service="api").format(
            record("stage finished", stage="analyzing", seconds=1.25, note="two words")
        )
    finally:
        JOB_ID.reset(token)
    assert "\n" not in line
    assert line.startswith("ts=")
    assert " level=info service=api logger=yousync.test " in line
    assert ' msg="stage finished" ' in line
    assert f" job_id={JOB} " in line
    assert line.endswith('stage=analyzing seconds=1.25 note="two words"')


def test_formatter_when_json_then_one_object_per_line() -> None:
    line = StructuredFormatter(service="worker", json_lines=True).format(
        record("task finished", job_id=JOB, state="SUCCESS", retries=0)
    )
    fields = json.loads(line)
    assert fields["service"] == "worker" and fields["msg"] == "task finished"
    assert fields["job_id"] == JOB and fields["state"] == "SUCCESS" and fields["retries"] == 0


def test_job_id_in_when_path_or_location_then_found() -> None:
    assert job_id_in(f"/tokens/analysis-progress/{JOB}") == JOB
    assert job_id_in("/tokens/test123/upload-audio") is None
    assert job_id_in(None) is None


def test_logs_when_job_runs_then_one_grep_follows_it_across_api_and_worker(
    pipeline: str,
    token_id: str,
    api_service: stack.Proc,
    worker_service: stack.Proc,
) -> None:
    body = httpx.post(
        f"{pipeline}/tokens/{token_id}/upload-audio",
        files={"file": ("take.wav", wav_bytes(1.0), "audio/wav")},
    ).json()
    job_id = body["job_id"]
    events = list(sse.stream(f"{pipeline}{body['progress_url']}"))
    assert events[-1].json["status"] == "completed"

    def lines(proc: stack.Proc) -> list[str]:
        return [line for line in proc.log_tail(5000).splitlines() if f"job_id={job_id}" in line]

    def worker_done() -> bool:
        return any('msg="task finished"' in line for line in lines(worker_service))

    stack.wait_until(worker_done, timeout=10, what="the worker's task-finished line")
    api = lines(api_service)
    # The upload line carries the job id although it is not in the path (from `Location`).
    assert any(
        "method=POST" in line and "status=202" in line and "upload-audio" in line for line in api
    ), api
    assert any("analysis-progress" in line and "status=200" in line for line in api), api
    for line in api:
        assert "duration_ms=" in line and "service=api" in line

    worker = lines(worker_service)
    assert any('msg="task started"' in line for line in worker), worker
    assert any("state=SUCCESS" in line and "result=completed" in line for line in worker), worker
    stages = [
        part.removeprefix("stage=")
        for line in worker
        if 'msg="stage finished"' in line
        for part in line.split()
        if part.startswith("stage=")
    ]
    assert stages == [stage.value for stage in TIMED_STAGES], worker
