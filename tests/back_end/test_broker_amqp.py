"""The same end-to-end flow with RabbitMQ as the Celery broker (`CELERY_BROKER_URL=amqp://…`),
when a RabbitMQ server answers on this machine; skipped with the reason otherwise."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devtools import stack
from tests.helpers import sse
from tests.helpers.audio import wav_bytes

AMQP_HOST, AMQP_PORT = "127.0.0.1", 5672


def rabbitmq_answers() -> bool:
    try:
        with socket.create_connection((AMQP_HOST, AMQP_PORT), timeout=1) as conn:
            conn.sendall(b"AMQP\x00\x00\x09\x01")
            return conn.recv(8)[:1] == b"\x01"  # a Connection.Start frame
    except OSError:
        return False


@pytest.fixture
def amqp_stack(
    stack_env: dict[str, str], workdir: Path, analysis_service: stack.Proc
) -> Iterator[str]:
    if not rabbitmq_answers():
        pytest.skip(f"no RabbitMQ answers on {AMQP_HOST}:{AMQP_PORT} (guest/guest)")
    own_redis = stack.redis_proc(workdir).start()
    env = {
        **stack_env,
        "REDIS_URL": f"redis://127.0.0.1:{own_redis.name.split(':')[1]}/0",
        "CELERY_BROKER_URL": f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}//",
    }
    worker = stack.worker_proc(env, workdir, name=f"amqp{uuid.uuid4().hex[:6]}").start()
    api = stack.api_proc(env, workdir).start()
    try:
        yield f"http://127.0.0.1:{api.name.split(':')[1]}"
    finally:
        for proc in (api, worker, own_redis):
            proc.kill()


def test_pipeline_when_broker_is_rabbitmq_then_upload_completes_with_live_progress(
    amqp_stack: str, token_id: str
) -> None:
    response = httpx.post(
        f"{amqp_stack}/tokens/{token_id}/upload-audio",
        files={"file": ("a.wav", wav_bytes(1.0, freq=612.0), "audio/wav")},
    )
    assert response.status_code == 202
    events = [e.json for e in sse.stream(f"{amqp_stack}{response.json()['progress_url']}")]
    assert events[-1]["status"] == "completed"
    progress = [e["progress"] for e in events]
    assert progress == sorted(progress)
    ready = httpx.get(f"{amqp_stack}/readyz").json()
    assert ready["checks"]["broker"]["ok"] is True
