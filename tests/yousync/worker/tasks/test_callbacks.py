"""The drain and its sender in this process, against a real Redis and a real HTTP receiver:
what an attempt sends, what counts as delivered, and many deliveries sent once each."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from tests.helpers.receiver import Receiver
from tests.helpers.tls import ThrowawayCA
from yousync.core import keys, webhooks
from yousync.core.callbacks import DeliveryStore
from yousync.core.config import Settings
from yousync.core.jobs import AsyncJobStore, JobStore
from yousync.worker import callback_http
from yousync.worker.tasks.callbacks import NO_SECRET, Sender, drain_once

SECRET = "whsec_" + base64.b64encode(b"drain-test-secret").decode()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver().start()
    yield receiver
    receiver.close()


def _settings(redis_url: str, url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "redis_url": redis_url,
        "callback_url": url,
        "callback_secret": SECRET,
        "callback_timeout_seconds": 5,
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


def _end_jobs(
    redis_url: str, settings: Settings, count: int, *, first: int = 0, **markers: object
) -> list[str]:
    """`count` jobs created and completed as the API and a worker write them."""
    ids = [f"33333333-3333-4333-8333-{n:012d}" for n in range(first, first + count)]

    async def create() -> None:
        client = aioredis.Redis.from_url(redis_url)
        store = AsyncJobStore(client, settings)
        for job_id in ids:
            await store.create(job_id, "tok", **markers)
        await client.aclose()

    asyncio.run(create())
    store = JobStore(redis.Redis.from_url(redis_url), settings)
    for job_id in ids:
        store.update(job_id, "tok", status="completed", progress=100, stage="done", message="m")
    return ids


def _records(job_ids: list[str]) -> list[str]:
    return [keys.callback(f"{job_id}.1") for job_id in job_ids]


def _drain(
    redis_client: redis.Redis, settings: Settings, *, concurrency: int = 16, **sender: Any
) -> int:
    with Sender.open(settings, **sender) as opened:
        return drain_once(DeliveryStore(redis_client, settings), opened, concurrency=concurrency)


def test_drain_when_many_due_then_each_sent_once_signed_and_delivered(
    redis_client: redis.Redis, redis_url: str, receiver: Receiver
) -> None:
    settings = _settings(redis_url, receiver.url)
    ids = _end_jobs(redis_url, settings, 40)
    assert _drain(redis_client, settings) == 40
    errors = {r.get("last_error", "") for r in map(redis_client.hgetall, _records(ids))}
    assert errors == {""}, errors  # every first attempt delivered
    requests = receiver.requests()
    assert sorted(r.headers["webhook-id"] for r in requests) == sorted(f"{i}.1" for i in ids)
    for request in requests:
        webhooks.verify(SECRET, request.headers, request.body)
        assert request.headers["user-agent"].startswith("YouSync")
    assert redis_client.zcard(keys.CALLBACKS_DUE) == 0
    assert _drain(redis_client, settings) == 0  # nothing sent twice


def test_drain_when_receiver_redirects_then_not_followed_and_the_attempt_failed(
    redis_client: redis.Redis, redis_url: str, receiver: Receiver
) -> None:
    receiver.status = 302
    settings = _settings(redis_url, receiver.url)
    [job_id] = _end_jobs(redis_url, settings, 1)
    _drain(redis_client, settings)
    record = redis_client.hgetall(keys.callback(f"{job_id}.1"))
    assert record["attempts"] == "1" and record["last_error"] == "HTTP 302"
    assert len(receiver.requests()) == 1


def test_drain_when_an_uploads_target_resolves_to_loopback_then_refused_and_nothing_sent(
    redis_client: redis.Redis, redis_url: str, receiver: Receiver
) -> None:
    """The upload's own target is checked again at send time (the operator's is trusted)."""
    settings = _settings(redis_url, "", callback_allowed_hosts="localhost")
    own = receiver.url.replace("127.0.0.1", "localhost")
    [job_id] = _end_jobs(redis_url, settings, 1, callback_url=own)
    _drain(redis_client, settings)
    record = redis_client.hgetall(keys.callback(f"{job_id}.1"))
    assert record["last_error"].startswith("refused:")
    assert receiver.requests() == []


def test_sender_when_prod_has_no_secret_then_nothing_is_sent_unsigned(
    redis_client: redis.Redis, redis_url: str, receiver: Receiver
) -> None:
    settings = _settings(redis_url, receiver.url, callback_secret="")
    _end_jobs(redis_url, settings, 1)
    prod = settings.model_copy(update={"environment": "prod"})
    _drain(redis_client, prod)
    assert receiver.requests() == []
    [delivery_id] = redis_client.zrange(keys.CALLBACKS_DUE, 0, -1)
    assert redis_client.hget(keys.callback(delivery_id), "last_error") == NO_SECRET


def test_sender_when_dev_has_no_secret_then_sent_without_a_signature(
    redis_client: redis.Redis, redis_url: str, receiver: Receiver
) -> None:
    settings = _settings(redis_url, receiver.url, callback_secret="")
    _end_jobs(redis_url, settings, 1)
    _drain(redis_client, settings)
    [request] = receiver.requests()
    assert "webhook-signature" not in request.headers and request.headers["webhook-id"]


def test_drain_when_the_environment_names_a_proxy_then_it_is_ignored(
    redis_client: redis.Redis,
    redis_url: str,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A proxy would resolve the host again (undoing the checked address) and see the body."""
    proxy = Receiver().start()
    try:
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.port}")
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        settings = _settings(redis_url, receiver.url)
        _end_jobs(redis_url, settings, 1)
        _drain(redis_client, settings)
        assert proxy.requests() == []
        assert len(receiver.requests()) == 1
    finally:
        proxy.close()


def test_drain_when_two_hosts_share_an_address_then_one_hosts_tls_connection_is_not_reused(
    redis_client: redis.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keep-alive by name, not by address: the certificate of a.test says nothing of b.test."""
    ca = ThrowawayCA.create()
    receiver = Receiver(host="127.0.0.3", tls=ca.server_context("a.test"), keep_alive=True)
    receiver.start()
    real = callback_http._getaddrinfo
    monkeypatch.setattr(
        callback_http,
        "_getaddrinfo",
        lambda host, port: ["127.0.0.3"] if host.endswith(".test") else real(host, port),
    )
    try:
        settings = _settings(redis_url, "", callback_allowed_hosts="a.test,b.test,127.0.0.3")
        [a] = _end_jobs(redis_url, settings, 1, callback_url=f"https://a.test:{receiver.port}/h")
        [b] = _end_jobs(
            redis_url, settings, 1, first=1, callback_url=f"https://b.test:{receiver.port}/h"
        )
        _drain(redis_client, settings, concurrency=1, verify=ca.client_context())
        assert redis_client.hget(keys.callback(f"{a}.1"), "status") == "delivered"
        record_b = redis_client.hgetall(keys.callback(f"{b}.1"))
        assert record_b.get("status") != "delivered"
        assert "certificate" in record_b["last_error"].lower(), record_b["last_error"]
        assert [r.headers["webhook-id"] for r in receiver.requests()] == [f"{a}.1"]
    finally:
        receiver.close()


@contextlib.contextmanager
def _dripping_receiver() -> Iterator[str]:
    """An HTTP receiver that answers one header byte at a time, a few a second, for as long as
    the connection stays open (20 s at most): every read gets something, none ever times out."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            payload = b"HTTP/1.1 200 OK\r\nx-drip: " + b"a" * 200 + b"\r\ncontent-length: 0\r\n\r\n"
            with contextlib.suppress(OSError):
                for byte in payload:
                    if stop.wait(0.1):
                        return
                    conn.sendall(bytes([byte]))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
    finally:
        stop.set()
        listener.close()
        thread.join(30)


def test_attempt_when_the_receiver_drips_its_answer_then_it_fails_as_a_timeout_at_the_deadline(
    redis_client: redis.Redis, redis_url: str
) -> None:
    """Each read gets a byte in time; the attempt as a whole does not: it ends as a timeout,
    well before the lease would let another drain send the delivery again."""
    with _dripping_receiver() as url:
        settings = _settings(redis_url, url, callback_timeout_seconds=1)
        [job_id] = _end_jobs(redis_url, settings, 1)
        _drain(redis_client, settings)
    record = redis_client.hgetall(keys.callback(f"{job_id}.1"))
    assert record.get("status") != "delivered"
    assert "Timeout" in record["last_error"], record["last_error"]
    assert record["attempts"] == "1"


def test_attempt_when_dns_hangs_then_it_fails_as_a_timeout_at_the_deadline(
    redis_client: redis.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """getaddrinfo has no timeout of its own: it is waited on for the attempt's time only."""
    release = threading.Event()

    def hanging(host: str, port: int) -> list[str]:
        release.wait(30)
        return ["127.0.0.3"]

    monkeypatch.setattr(callback_http, "_getaddrinfo", hanging)
    try:
        settings = _settings(
            redis_url, "", callback_allowed_hosts="hooks.test", callback_timeout_seconds=1
        )
        [job_id] = _end_jobs(redis_url, settings, 1, callback_url="http://hooks.test/h")
        _drain(redis_client, settings)
    finally:
        release.set()
    record = redis_client.hgetall(keys.callback(f"{job_id}.1"))
    assert record["last_error"].startswith("timeout:"), record["last_error"]
