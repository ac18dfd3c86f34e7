"""Which S3 prefixes a DELETE clears (api/deletion.py): the job's own, and the stored object
only when no other live job holds it. The whole flow runs in tests/back_end/test_delete.py."""

from __future__ import annotations

from yousync.api.deletion import job_prefixes
from yousync.core.models import JobSnapshot
from yousync.core.record import JobRecord


def record(job_id: str, deduplicated_from: str | None = None) -> JobRecord:
    snapshot = JobSnapshot(
        job_id=job_id,
        token_id="tok",
        status="completed",
        progress=100,
        stage="done",
        message="m",
        created_at="t",
        updated_at="t",
    )
    return JobRecord(snapshot=snapshot, deduplicated_from=deduplicated_from)


def test_prefixes_when_original_without_holders_then_its_object_and_staged_input() -> None:
    assert job_prefixes(record("a"), holders=0) == ["incoming/a", "audio/tok/a."]


def test_prefixes_when_original_held_by_a_deduplicated_job_then_only_its_staged_input() -> None:
    assert job_prefixes(record("a"), holders=1) == ["incoming/a"]


def test_prefixes_when_deduplicated_and_the_last_holder_then_the_originals_object_too() -> None:
    dup = record("b", deduplicated_from="a")
    assert job_prefixes(dup, holders=0) == ["incoming/b", "audio/tok/b.", "audio/tok/a."]
    assert job_prefixes(dup, holders=1) == ["incoming/b", "audio/tok/b."]
