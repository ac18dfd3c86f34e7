"""Retention measured in days on the whole stack: a job finished by the real worker keeps its
record and events for RESULT_RETENTION_SECONDS (three days here, read back as Redis TTLs), its
dedupe entry for DEDUPE_WINDOW_SECONDS only."""

from __future__ import annotations

from typing import Any

import httpx

from tests.helpers.api import upload_accepted
from tests.helpers.audio import wav_bytes
from tests.helpers.wait import wait_until
from yousync.core import keys

THREE_DAYS = 259200


def test_retention_when_days_then_the_finished_job_lives_days_and_its_dedupe_entry_an_hour(
    mini_stack: Any, token_id: str
) -> None:
    mini = mini_stack(RESULT_RETENTION_SECONDS=str(THREE_DAYS), DEDUPE_WINDOW_SECONDS="3600")
    content = wav_bytes(1.0)
    body = upload_accepted(mini.api_url, token_id, content)
    final = httpx.get(f"{mini.api_url}{body['result_url']}?wait=60", timeout=70).json()
    assert final["status"] == "completed", final

    job_id = body["job_id"]
    for key in (keys.job(job_id), keys.job_events(job_id)):
        assert THREE_DAYS - 120 <= mini.redis.ttl(key) <= THREE_DAYS, key
    # Remembered right after the completing write: possibly a moment after `?wait` answered.
    wait_until(
        lambda: list(mini.redis.scan_iter(match=keys.dedupe(token_id, "*"))),
        timeout=10,
        what="the dedupe entry",
    )
    (entry,) = list(mini.redis.scan_iter(match=keys.dedupe(token_id, "*")))
    assert mini.redis.get(entry) == job_id
    assert 0 < mini.redis.ttl(entry) <= 3600
    again = upload_accepted(mini.api_url, token_id, content)
    assert again["deduplicated"] is True
