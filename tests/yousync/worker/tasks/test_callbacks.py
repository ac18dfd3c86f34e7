"""The drain and its sender in this process, against a real Redis and a real HTTP receiver:
what an attempt sends, what counts as delivered, and many deliveries sent once each."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator

import httpx
import pytest
import redis
import redis.asyncio as aioredis

from tests.helpers.receiver import Receiver
from yousync.core import keys, webhooks
from yousync.core.callbacks import DeliveryStore
from yousync.core.config import Settings
from yousync.core.jobs import AsyncJobStore, JobStore
from yousync.worker.tasks.callbacks import NO_SECRET, Sender, drain_once, http_client

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


def _end_jobs(redis_url: str, settings: Settings, count: int, **markers: object) -> list[str]:
    """`count` jobs created and completed as the API and a worker write them."""
    ids = [f"33333333-3333-4333-8333-{n:012d}" for n in range(count)]

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


def _drain(redis_client: redis.Redis, settings: Settings) -> int:
    with httpx.Client(timeout=settings.callback_timeout_seconds) as client:
        return drain_once(DeliveryStore(redis_client, settings), Sender(settings, client))


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
        with http_client(settings) as client:
            drain_once(DeliveryStore(redis_client, settings), Sender(settings, client))
        assert proxy.requests() == []
        assert len(receiver.requests()) == 1
    finally:
        proxy.close()
