"""Completion callbacks through real processes: Redis, Beat sending the drain every tick, the
callbacks worker (threads, queue `callbacks`), an analysis worker and the API for a job that
runs end to end, and a real HTTP receiver that can be down, failing, or holding requests open.
The retry schedule is shortened through the settings (0.2 s base, 0.5 s cap, 8 s give-up)."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from devtools import stack
from tests.helpers.api import upload_accepted
from tests.helpers.audio import wav_bytes
from tests.helpers.jobs import create_job
from tests.helpers.receiver import Received, Receiver
from yousync.core import keys, webhooks
from yousync.core.config import Settings
from yousync.core.jobs import JobStore

SECRET = "whsec_" + base64.b64encode(b"callback-test-secret-0123456789").decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"the-secret-before-the-rotation").decode()
TIMEOUT_SECONDS = 5.0  # a request held open must outlast the SIGKILL, on a loaded machine too


@dataclass
class CallbackStack:
    env: dict[str, str]
    redis_url: str
    redis: redis.Redis
    api_url: str
    callbacks_worker: stack.Proc
    beat: stack.Proc
    receiver: Receiver

    def end_job(self, status: str = "completed") -> str:
        """A job that ends now, written as a worker writes it (the worker's settings)."""
        job_id = create_job(self.redis_url, "tok-cb")
        settings = Settings(redis_url=self.redis_url, callback_url=self.receiver.url)
        store = JobStore(redis.Redis.from_url(self.redis_url), settings)
        store.update(job_id, "tok-cb", status=status, progress=100, stage="done", message="m")
        return job_id

    def record(self, job_id: str, n: int = 1) -> dict[str, str]:
        return dict(self.redis.hgetall(keys.callback(f"{job_id}.{n}")))

    def wait_record(self, job_id: str, what: str, predicate: object, timeout: float = 30) -> None:
        stack.poll(
            lambda: predicate(self.record(job_id)),  # type: ignore[operator]
            timeout=timeout,
            what=what,
        )


@pytest.fixture(scope="module")
def callback_stack(
    stack_env: dict[str, str], workdir: Path, analysis_service: stack.Proc
) -> Iterator[CallbackStack]:
    receiver = Receiver()
    own_redis = stack.redis_proc(workdir).start()
    redis_url = f"redis://127.0.0.1:{own_redis.name.split(':')[1]}/0"
    env = {
        **stack_env,
        "REDIS_URL": redis_url,
        "CALLBACK_URL": receiver.url,
        "CALLBACK_SECRET": f"{SECRET},{OLD_SECRET}",
        "CALLBACK_TICK_SECONDS": "0.2",
        "CALLBACK_RETRY_BASE_SECONDS": "0.2",
        "CALLBACK_RETRY_MAX_SECONDS": "0.5",
        "CALLBACK_GIVE_UP_SECONDS": "8",
        "CALLBACK_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS),
    }
    procs = [own_redis]
    try:
        for make in (
            lambda: stack.worker_proc(env, workdir, name=f"cba{uuid.uuid4().hex[:4]}"),
            lambda: stack.api_proc(env, workdir),
            lambda: stack.callbacks_worker_proc(env, workdir, name=f"cb{uuid.uuid4().hex[:4]}"),
            lambda: stack.beat_proc(env, workdir, name=f"cbbeat{uuid.uuid4().hex[:4]}"),
        ):
            procs.append(make().start())
        yield CallbackStack(
            env=env,
            redis_url=redis_url,
            redis=redis.Redis.from_url(redis_url, decode_responses=True),
            api_url=f"http://127.0.0.1:{procs[2].name.split(':')[1]}",
            callbacks_worker=procs[3],
            beat=procs[4],
            receiver=receiver,
        )
    finally:
        receiver.close()
        for proc in reversed(procs):
            proc.kill()


@pytest.fixture
def cb(callback_stack: CallbackStack) -> Iterator[CallbackStack]:
    callback_stack.receiver.reset()
    yield callback_stack
    callback_stack.receiver.reset()


def _verified(request: Received, secret: str = SECRET) -> dict[str, object]:
    webhooks.verify(secret, request.headers, request.body)
    return dict(json.loads(request.body))


def test_job_end_when_receiver_down_then_failing_then_up_then_accepted_once_under_one_id(
    cb: CallbackStack,
) -> None:
    job_id = cb.end_job()
    # Down (connections refused) for the first two attempts …
    cb.wait_record(job_id, "two refused attempts", lambda r: int(r.get("attempts", 0)) >= 2)
    # … then up but answering 503 once, then 2xx.
    cb.receiver.fail_first = 1
    cb.receiver.start()
    cb.wait_record(job_id, "delivered", lambda r: r.get("status") == "delivered")

    requests = cb.receiver.requests()
    assert len(requests) == 2  # the 503 and the accepted one
    assert {r.headers["webhook-id"] for r in requests} == {f"{job_id}.1"}
    accepted = requests[-1]
    body = _verified(accepted)
    _verified(accepted, OLD_SECRET)  # one signature per secret: a rotation in progress works
    assert abs(int(accepted.headers["webhook-timestamp"]) - time.time()) < 60
    assert body["job_id"] == job_id and body["status"] == "completed"
    with pytest.raises(webhooks.WebhookVerificationError):
        webhooks.verify(SECRET, accepted.headers, accepted.body.replace(b"completed", b"failed"))

    attempts = int(cb.record(job_id)["attempts"])
    assert attempts >= 4  # two refused, the 503, the accepted one
    snapshot = httpx.get(f"{cb.api_url}/tokens/analysis-result/{job_id}").json()
    assert snapshot["callback"] == {"status": "delivered", "attempts": attempts}


def test_job_end_when_receiver_never_up_then_dead_letter_counted_and_replay_delivers(
    cb: CallbackStack,
) -> None:
    job_id = cb.end_job(status="failed")
    delivery_id = f"{job_id}.1"
    stack.poll(
        lambda: cb.redis.zscore(keys.CALLBACKS_DEAD, delivery_id) is not None,
        timeout=30,
        what="dead letter",
    )
    assert cb.redis.ttl(keys.callback(delivery_id)) == -1
    assert cb.redis.ttl(keys.job(job_id)) == -1  # the job keeps its record meanwhile
    assert cb.redis.zscore(keys.CALLBACKS_DUE, delivery_id) is None
    snapshot = httpx.get(f"{cb.api_url}/tokens/analysis-result/{job_id}").json()
    assert snapshot["callback"]["status"] == "failed"
    metrics = httpx.get(f"{cb.api_url}/metrics").text
    assert "yousync_callbacks_dead_letters " in metrics

    cb.receiver.start()
    listed = stack.run_in_back_end(
        [str(stack.BIN / "python"), "-m", "yousync.worker.callbacks", "list"], cb.env
    )
    assert delivery_id in listed.stdout
    replay = stack.run_in_back_end(
        [str(stack.BIN / "python"), "-m", "yousync.worker.callbacks", "replay", delivery_id],
        cb.env,
    )
    assert replay.returncode == 0, replay.stderr
    cb.wait_record(job_id, "delivered after replay", lambda r: r.get("status") == "delivered")
    [request] = cb.receiver.requests()
    assert request.headers["webhook-id"] == delivery_id
    assert _verified(request)["status"] == "failed"
    assert cb.redis.zscore(keys.CALLBACKS_DEAD, delivery_id) is None
    assert cb.redis.ttl(keys.job(job_id)) > 0  # delivered: its retention is back


def test_callbacks_worker_when_killed_mid_attempt_then_delivered_after_restart_same_id(
    cb: CallbackStack,
) -> None:
    cb.receiver.release.clear()  # hold every request open
    cb.receiver.start()
    job_id = cb.end_job()
    stack.poll(lambda: cb.receiver.requests(), timeout=30, what="first attempt in flight")
    cb.callbacks_worker.kill()  # SIGKILL, the request still open
    cb.receiver.release.set()
    cb.callbacks_worker.start()
    cb.wait_record(job_id, "delivered after restart", lambda r: r.get("status") == "delivered")
    requests = cb.receiver.requests()
    assert len(requests) == 2
    assert {r.headers["webhook-id"] for r in requests} == {f"{job_id}.1"}
    assert cb.record(job_id)["attempts"] == "1"  # the killed attempt left no outcome


def test_upload_when_the_job_completes_then_the_receiver_gets_the_result_endpoints_snapshot(
    cb: CallbackStack, token_id: str
) -> None:
    cb.receiver.start()
    job = upload_accepted(cb.api_url, token_id, wav_bytes(1.0))
    stack.poll(lambda: cb.receiver.requests(), timeout=60, what="callback of the upload")
    [request] = cb.receiver.requests()
    body = _verified(request)
    result = httpx.get(f"{cb.api_url}/tokens/analysis-result/{job['job_id']}").json()
    assert body["status"] == "completed" and body["result"]
    # The same JSON as the result endpoint, except the callback's own progress since the end.
    assert body["callback"] == {"status": "pending", "attempts": 0}
    assert {**body, "callback": None} == {**result, "callback": None}


def test_uploads_when_they_name_their_own_target_then_it_gets_each_end_the_operator_none(
    cb: CallbackStack, token_id: str
) -> None:
    """An upload's allowlisted `callback_url` wins over CALLBACK_URL; an identical upload
    (answered at once from the first one's result) is a job end of its own, with its own id."""
    own = Receiver(host="127.0.0.3").start()
    cb.receiver.start()
    try:
        content = wav_bytes(1.0, freq=523.0)
        job_ids = []
        for _ in range(2):
            response = httpx.post(
                f"{cb.api_url}/tokens/{token_id}/upload-audio",
                files={"file": ("take.wav", content, "audio/wav")},
                data={"callback_url": own.url},
                timeout=60,
            )
            assert response.status_code == 202, response.text
            job_ids.append(response.json()["job_id"])
            stack.poll(lambda: len(own.requests()) == len(job_ids), timeout=60, what="callback")
        ids = [r.headers["webhook-id"] for r in own.requests()]
        assert ids == [f"{job_id}.1" for job_id in job_ids]
        assert [_verified(r)["deduplicated"] for r in own.requests()] == [False, True]
        assert cb.receiver.requests() == []
    finally:
        own.close()


def test_job_end_when_written_by_the_worker_then_it_sends_the_drain_itself_without_beat(
    cb: CallbackStack, token_id: str
) -> None:
    """Beat stopped: only the drain the worker sends after the job's final write can deliver."""
    cb.receiver.start()
    cb.beat.stop()
    try:
        job = upload_accepted(cb.api_url, token_id, wav_bytes(1.0, freq=659.0))
        stack.poll(lambda: cb.receiver.requests(), timeout=60, what="callback without Beat")
        [request] = cb.receiver.requests()
        assert request.headers["webhook-id"] == f"{job['job_id']}.1"
    finally:
        cb.beat.start()


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.1:{port}/hook",
        # Allowlisted by name, but the name resolves to loopback: refused at its address.
        "http://localhost:{port}/hook",
        "http://169.254.169.254/latest/meta-data/",
        "off-list",
    ],
)
def test_upload_when_its_callback_target_is_internal_or_off_the_allowlist_then_422_and_nothing_sent(
    cb: CallbackStack, token_id: str, target: str
) -> None:
    """Refused at upload: no job, so no end and no delivery; an ordinary job's callback,
    delivered afterwards, shows the drains ran meanwhile and still sent nothing there."""
    internal = Receiver(host="127.0.0.1").start()  # on loopback, as Redis or an admin port is
    cb.receiver.start()
    try:
        url = "https://hooks.elsewhere.example/h" if target == "off-list" else target
        response = httpx.post(
            f"{cb.api_url}/tokens/{token_id}/upload-audio",
            files={"file": ("take.wav", wav_bytes(1.0, freq=587.0), "audio/wav")},
            data={"callback_url": url.format(port=internal.port)},
            timeout=60,
        )
        assert response.status_code == 422, response.text
        assert response.json()["code"] == "callback_url_not_allowed"
        assert cb.redis.zcard(keys.token_jobs(token_id)) == 0
        job_id = cb.end_job()
        stack.poll(lambda: cb.receiver.requests(), timeout=30, what="the ordinary callback")
        assert [r.headers["webhook-id"] for r in cb.receiver.requests()] == [f"{job_id}.1"]
        assert internal.requests() == []
    finally:
        internal.close()
