"""Deduplication of identical uploads and Idempotency-Key replays, over the real stack."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import httpx
import redis
import redis.asyncio as aioredis

from tests.helpers.audio import wav_bytes
from tests.helpers.multipart import multipart
from tests.yousync.api.uploads.test_receive import chunked
from yousync.api.uploads.staging import UploadStaging
from yousync.api.uploads.submission import Accepted, submit_upload
from yousync.core import keys
from yousync.core.config import Settings
from yousync.core.jobs import AsyncJobStore, JobStore

AUDIO = wav_bytes(1.0, freq=523.0)


def post(base: str, token_id: str, content: bytes = AUDIO, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{base}/tokens/{token_id}/upload-audio",
        files={"file": ("a.wav", content, "audio/wav")},
        headers=headers,
        timeout=30,
    )


def wait_done(base: str, job_id: str) -> dict[str, object]:
    return dict(httpx.get(f"{base}/tokens/analysis-result/{job_id}?wait=30", timeout=40).json())


def test_upload_when_identical_file_again_for_same_token_then_completed_at_once_and_deduplicated(
    pipeline: str, token_id: str, spool_dir: Path, redis_client: redis.Redis
) -> None:
    first = post(pipeline, token_id).json()
    done = wait_done(pipeline, first["job_id"])
    assert done["status"] == "completed"

    again = post(pipeline, token_id)
    assert again.status_code == 202
    body = again.json()
    assert body["job_id"] != first["job_id"]
    assert body["status"] == "completed" and body["deduplicated"] is True
    snapshot = httpx.get(f"{pipeline}{body['result_url']}").json()
    assert snapshot["result"] == done["result"] and snapshot["deduplicated"] is True
    assert snapshot["progress"] == 100 and snapshot["s3_url"] == done["s3_url"]
    assert not list(spool_dir.glob(f"{body['job_id']}*"))
    assert redis_client.xlen(f"yousync:job:{body['job_id']}:events") == 1

    other_token = post(pipeline, f"{token_id}-b").json()
    assert other_token["status"] == "queued", "deduplication is per token"
    wait_done(pipeline, other_token["job_id"])


def test_upload_when_idempotency_key_repeats_then_same_job_is_answered(
    pipeline: str, token_id: str, redis_client: redis.Redis
) -> None:
    first = post(pipeline, token_id, wav_bytes(1.0, freq=330.0), **{"Idempotency-Key": "k-1"})
    second = post(pipeline, token_id, wav_bytes(1.0, freq=330.0), **{"Idempotency-Key": "k-1"})
    assert first.status_code == second.status_code == 202
    assert second.json()["job_id"] == first.json()["job_id"]
    assert second.headers["idempotent-replayed"] == "true"
    assert redis_client.zcard(f"yousync:token:{token_id}:jobs") == 1
    other = post(pipeline, token_id, wav_bytes(1.0, freq=331.0), **{"Idempotency-Key": "k-2"})
    assert other.json()["job_id"] != first.json()["job_id"]
    for job in (first, other):
        wait_done(pipeline, job.json()["job_id"])


def test_upload_when_idempotency_key_invalid_then_422_and_key_free_after_a_rejected_upload(
    api_url: str, token_id: str, redis_client: redis.Redis
) -> None:
    bad = post(api_url, token_id, **{"Idempotency-Key": "x" * 200})
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_idempotency_key"
    rejected = post(api_url, token_id, b"not audio at all", **{"Idempotency-Key": "k-3"})
    assert rejected.status_code == 415
    assert redis_client.keys("yousync:idem:*") == [], "a failed request releases its key"


def test_upload_when_an_allowlisted_callback_url_is_given_then_the_job_records_it(
    pipeline: str, token_id: str, redis_client: redis.Redis
) -> None:
    """By form field or by header; the receiver's address is allowlisted (conftest). The jobs
    run to their end here, so no write of theirs lands in a later test's Redis."""
    api_url = pipeline
    by_field = httpx.post(
        f"{api_url}/tokens/{token_id}/upload-audio",
        files={"file": ("a.wav", wav_bytes(1.0, freq=440.0), "audio/wav")},
        data={"callback_url": "http://127.0.0.3:9001/hooks?src=field"},
        timeout=30,
    )
    by_header = post(
        api_url,
        token_id,
        wav_bytes(1.0, freq=441.0),
        **{"Callback-URL": "http://127.0.0.3:9001/hooks?src=header"},
    )
    assert by_field.status_code == by_header.status_code == 202, (by_field.text, by_header.text)
    stored = [
        redis_client.hget(f"yousync:job:{response.json()['job_id']}", "callback_url")
        for response in (by_field, by_header)
    ]
    assert stored == [
        "http://127.0.0.3:9001/hooks?src=field",
        "http://127.0.0.3:9001/hooks?src=header",
    ]
    plain = post(api_url, token_id, wav_bytes(1.0, freq=442.0)).json()
    assert redis_client.hget(f"yousync:job:{plain['job_id']}", "callback_url") is None
    for job_id in (by_field.json()["job_id"], by_header.json()["job_id"], plain["job_id"]):
        assert wait_done(api_url, job_id)["status"] == "completed"


class _DeleteLandsBeforeCreate(AsyncJobStore):
    """DELETE of the original claims it right before the deduplicated job is created: the
    interleaving of two requests, in the racy order, on one real Redis."""

    holders: int | None = None

    async def create(self, job_id: str, token_id: str, **markers: Any) -> str:
        root_id = markers.get("deduplicated_from")
        if root_id is not None and self.holders is None:
            root = await self.get(str(root_id))
            assert root is not None
            self.holders = await self.claim_delete(root)
        return await super().create(job_id, token_id, **markers)


def test_upload_when_a_delete_claims_the_original_mid_dedup_then_no_job_answers_a_deleted_object(
    redis_url: str, redis_client: redis.Redis, token_id: str, tmp_path: Path
) -> None:
    """The object of a completed original may go only when no live job answers with it: the
    deduplicated job must either be counted by DELETE's claim or not be created."""
    body, content_type = multipart(("file", "a.wav", AUDIO))
    settings = Settings(redis_url=redis_url, spool_dir=tmp_path, upload_staging="spool")
    sha = hashlib.sha256(AUDIO).hexdigest()
    orig = f"orig-{token_id}"
    sync = JobStore(redis.Redis.from_url(redis_url), settings)
    enqueued: list[str] = []

    async def go() -> tuple[Accepted, int | None]:
        client = aioredis.Redis.from_url(redis_url)
        store = _DeleteLandsBeforeCreate(client, settings)
        await store.create(orig, token_id, sha256=sha)
        sync.update(
            orig, token_id, status="completed", progress=100, stage="done", s3_url="s3://b/k"
        )
        redis_client.set(keys.dedupe(token_id, sha), orig)
        staging = UploadStaging(settings, store=None)  # type: ignore[arg-type]
        try:
            accepted = await submit_upload(
                token_id=token_id,
                chunks=chunked(body),
                content_type=content_type,
                content_length=str(len(body)),
                settings=settings,
                store=store,
                staging=staging,
                enqueue=lambda job_id, task_id: enqueued.append(job_id),
            )
            return accepted, store.holders
        finally:
            await client.aclose()

    accepted, holders = asyncio.run(go())
    assert holders is not None, "the DELETE did not land"
    if holders == 0:
        # The original's object is deleted: the upload must not answer with it.
        assert not accepted.deduplicated
        assert accepted.status == "queued" and enqueued == [accepted.job_id]
        assert not redis_client.sismember(keys.job_dedups(orig), accepted.job_id)


def test_upload_when_idempotency_key_names_a_deleted_job_then_the_key_is_free_for_a_new_job(
    redis_url: str, redis_client: redis.Redis, token_id: str, tmp_path: Path
) -> None:
    """DELETE cannot know the Idempotency-Keys naming its job (no reverse index): a replay of
    such a key must not answer the deleted job, and is a new upload."""
    body, content_type = multipart(("file", "a.wav", wav_bytes(1.0, freq=600.0)))
    settings = Settings(redis_url=redis_url, spool_dir=tmp_path, upload_staging="spool")
    deleted = f"deleted-{token_id}"
    redis_client.set(keys.idempotency(token_id, "k-del"), deleted, ex=3600)
    enqueued: list[str] = []

    async def go() -> Accepted:
        client = aioredis.Redis.from_url(redis_url)
        try:
            return await submit_upload(
                token_id=token_id,
                chunks=chunked(body),
                content_type=content_type,
                content_length=str(len(body)),
                idempotency_key="k-del",
                settings=settings,
                store=AsyncJobStore(client, settings),
                staging=UploadStaging(settings, store=None),  # type: ignore[arg-type]
                enqueue=lambda job_id, task_id: enqueued.append(job_id),
            )
        finally:
            await client.aclose()

    accepted = asyncio.run(go())

    assert not accepted.replayed and accepted.job_id != deleted
    assert enqueued == [accepted.job_id] and accepted.status == "queued"
    assert redis_client.get(keys.idempotency(token_id, "k-del")) == accepted.job_id
