"""Flower, as `make dev` runs it (`celery -A celery_app flower` from back-end/, basic auth):
it sees every `analyze_audio` through the workers' task events, with its args (the job id only)
and state, over its authenticated HTTP API. Also: its configuration file takes basic auth from
the settings, so a bare `celery -A celery_app flower` is never open."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
from celery import Celery

from devtools import stack
from tests.helpers import sse
from tests.helpers.audio import wav_bytes
from tests.helpers.wait import wait_until

AUTH = ("flower-test", "flower-secret")  # the `flower_auth` fixture's


def flower_tasks(flower_url: str, **params: str) -> dict[str, Any]:
    response = httpx.get(f"{flower_url}/api/tasks", params=params, auth=AUTH, timeout=10)
    assert response.status_code == 200, response.text
    return dict(response.json())


def wait_for_events(flower_url: str, celery_client: Celery) -> None:
    """Flower binds its event queue after it starts answering HTTP: send a quick no-op task
    until Flower has seen one, so the test's real task cannot be missed."""
    sent: list[str] = []

    def flower_saw_one() -> bool:
        seen = flower_tasks(flower_url, taskname="tasks.maintenance.mark_stuck_jobs")
        if any(task_id in seen for task_id in sent):
            return True
        result = celery_client.send_task("tasks.maintenance.mark_stuck_jobs", queue="maintenance")
        result.get(timeout=10)
        sent.append(result.id)
        return False

    wait_until(flower_saw_one, timeout=20, interval=0.3, what="Flower receiving task events")


def test_flower_when_job_runs_then_its_api_shows_the_task_with_job_id_and_state(
    pipeline: str,
    flower_url: str,
    flower_auth: tuple[str, str],
    celery_client: Celery,
    token_id: str,
) -> None:
    assert flower_auth == AUTH
    unauthenticated = httpx.get(f"{flower_url}/api/tasks", timeout=10)
    assert unauthenticated.status_code == 401
    wrong = httpx.get(f"{flower_url}/api/tasks", auth=("flower-test", "nope"), timeout=10)
    assert wrong.status_code == 401
    wait_for_events(flower_url, celery_client)

    body = httpx.post(
        f"{pipeline}/tokens/{token_id}/upload-audio",
        files={"file": ("take.wav", wav_bytes(1.0), "audio/wav")},
    ).json()
    events = list(sse.stream(f"{pipeline}{body['progress_url']}"))
    assert events[-1].json["status"] == "completed"

    def succeeded() -> bool:
        task = flower_tasks(flower_url, taskname="tasks.audio_tasks.analyze_audio").get(
            body["task_id"]
        )
        return bool(task) and task["state"] == "SUCCESS"

    stack.wait_until(succeeded, timeout=15, what="Flower showing the finished task")
    task = flower_tasks(flower_url)[body["task_id"]]
    assert task["name"] == "tasks.audio_tasks.analyze_audio"
    assert task["args"] == repr([body["job_id"]])  # the job id, never file bytes
    assert task["kwargs"] == "{}"
    assert task["result"] == "'completed'"
    assert task["worker"].startswith("w1@")
    assert task["received"] and task["started"] and task["succeeded"]


def test_flowerconfig_when_settings_have_basic_auth_then_flower_uses_them() -> None:
    from devtools.stack import BACK_END

    def basic_auth(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-c",
                "import runpy; print(runpy.run_path('flowerconfig.py')['basic_auth'])",
            ],
            cwd=BACK_END,
            env=stack.service_env(env),
            capture_output=True,
            text=True,
            timeout=30,
        )

    found = basic_auth({"FLOWER_BASIC_AUTH": "ops:s3cret,viewer:pw"})
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == "['ops:s3cret', 'viewer:pw']"

    # No credentials anywhere (the empty variable wins over ../.env): refuse to run open.
    refused = basic_auth({"FLOWER_BASIC_AUTH": ""})
    assert refused.returncode != 0
    assert "FLOWER_BASIC_AUTH" in refused.stderr


def test_seed_worker_command_when_run_verbatim_then_consumes_audio_queue_and_completes_jobs(
    stack_env: dict[str, str], workdir: Path, analysis_service: stack.Proc, token_id: str
) -> None:
    # Seed 003's command, word for word; only the environment says where Redis and S3 are.
    own_redis = stack.redis_proc(workdir).start()
    marker = workdir / f"seed-worker-{token_id}.ready"
    env = {
        **stack_env,
        "REDIS_URL": f"redis://127.0.0.1:{own_redis.name.split(':')[1]}/0",
        "YOUSYNC_WORKER_READY_FILE": str(marker),
    }
    worker = seed_proc(
        "celery -A celery_app worker --loglevel=info --queue=audio_queue",
        env,
        workdir,
        ready=marker.exists,
        ready_timeout=60.0,
    )
    api = stack.api_proc(env, workdir)
    try:
        worker.start()
        api.start()
        base = f"http://127.0.0.1:{api.name.split(':')[1]}"
        body = httpx.post(
            f"{base}/tokens/{token_id}/upload-audio",
            files={"file": ("take.wav", wav_bytes(1.0), "audio/wav")},
            timeout=30,
        ).json()
        done = httpx.get(f"{base}{body['result_url']}?wait=30", timeout=40).json()
    finally:
        api.stop()
        worker.stop()
        own_redis.kill()

    assert done["status"] == "completed", done
    banner = worker.log_path.read_text()
    queues = banner[banner.index("[queues]") : banner.index("[tasks]")]
    assert ".> audio_queue" in queues
    assert "maintenance" not in queues, "only the queue the seed names"


def seed_proc(command: str, env: dict[str, str], workdir: Path, **ready: Any) -> stack.Proc:
    """A seed command, run from back-end/ with the venv's executable of its first word."""
    words = command.split()
    name = f"seed-{words[0]}-{uuid.uuid4().hex[:6]}"
    return stack.Proc(
        name=name,
        argv=[str(stack.BIN / words[0]), *words[1:]],
        env=stack.service_env(env),
        cwd=stack.BACK_END,
        log_path=workdir / f"{name}.log",
        **ready,
    )


def seed_server(
    command: str, env: dict[str, str], workdir: Path, health: str
) -> tuple[stack.Proc, str]:
    """A seed command that serves HTTP, `{port}` in it replaced by a free port; ready once
    `health` answers 200. Returns the process (not started) and its base URL."""
    port = stack.free_port()
    base = f"http://127.0.0.1:{port}"
    proc = seed_proc(
        command.format(port=port), env, workdir, ready=lambda: stack.http_ok(base + health)
    )
    return proc, base


def test_seed_api_command_when_run_verbatim_but_the_port_then_serves_the_api(
    backend_env: dict[str, str], workdir: Path
) -> None:
    api, base = seed_server(
        "uvicorn main:app --reload --host 0.0.0.0 --port {port}", backend_env, workdir, "/healthz"
    )
    try:
        api.start()
        openapi = httpx.get(f"{base}/openapi.json", timeout=10).json()
    finally:
        api.kill()  # its process group: the reloader and the server it started

    assert "/tokens/{token_id}/upload-audio" in openapi["paths"]


def test_seed_flower_command_when_run_verbatim_but_the_port_then_serves_behind_basic_auth(
    backend_env: dict[str, str], workdir: Path, flower_auth: tuple[str, str]
) -> None:
    env = {**backend_env, "FLOWER_BASIC_AUTH": ":".join(flower_auth)}
    flower, base = seed_server(
        "celery -A celery_app flower --port={port}", env, workdir, "/healthcheck"
    )
    try:
        flower.start()
        anonymous = httpx.get(f"{base}/api/workers", timeout=10)
        authenticated = httpx.get(f"{base}/api/workers", auth=flower_auth, timeout=10)
    finally:
        flower.kill()

    assert anonymous.status_code == 401
    assert authenticated.status_code == 200


def test_seed_inspect_command_when_run_verbatim_then_lists_the_running_worker(
    backend_env: dict[str, str], worker_service: stack.Proc
) -> None:
    result = stack.run_in_back_end(
        [str(stack.BIN / "celery"), "-A", "celery_app", "inspect", "active"], backend_env
    )

    assert result.returncode == 0, result.stderr
    assert "w1@" in result.stdout  # the session worker's hostname
