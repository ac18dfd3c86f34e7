"""The job record: a hash's flat strings parsed once into typed attributes (no Redis here)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from yousync.core.models import SNAPSHOT_FIELDS, JobStatus, encode_fields
from yousync.core.record import MARKER_FIELDS, JobRecord, PreparedFile
from yousync.core.stages import Stage

SNAPSHOT = {
    "job_id": "j1",
    "token_id": "tok",
    "status": "processing",
    "progress": "40",
    "stage": "analyzing",
    "message": "Analysing",
    "created_at": "2025-01-01T00:00:00.000Z",
    "updated_at": "2025-01-01T00:00:01.000Z",
    "eta_seconds": "",
    "stalled": "0",
}


def test_job_record_when_every_marker_is_set_then_each_is_typed() -> None:
    fields = {
        **SNAPSHOT,
        **encode_fields(
            {
                "task_id": "t1",
                "spool_path": "/spool/j1",
                "source_format": "wav",
                "filename": "a.wav",
                "sha256": "ab" * 32,
                "size_bytes": 1234,
                "deduplicated_from": "j0",
                "deliveries": 2,
                "worker_pid": 4321,
                "prepared_path": "/spool/j1.prepared.flac",
                "prepared_extension": "flac",
                "prepared_content_type": "audio/flac",
                "prepared_size": "99",
                "duration_ms": 1000,
                "upload_started": 1,
                "s3_key": "audio/tok/j1.flac",
                "last_event_id": "1-0",
            }
        ),
    }
    record = JobRecord.from_fields(fields)
    assert (record.job_id, record.token_id, record.status) == ("j1", "tok", JobStatus.PROCESSING)
    assert record.snapshot.progress == 40 and record.snapshot.stage is Stage.ANALYZING
    assert record.snapshot.eta_seconds is None
    assert record == JobRecord(
        snapshot=record.snapshot,
        task_id="t1",
        spool_path=Path("/spool/j1"),
        source_format="wav",
        filename="a.wav",
        sha256="ab" * 32,
        size_bytes=1234,
        deduplicated_from="j0",
        deliveries=2,
        worker_pid=4321,
        prepared=PreparedFile(Path("/spool/j1.prepared.flac"), "flac", "audio/flac", 99),
        duration_ms=1000,
        upload_started=True,
        s3_key="audio/tok/j1.flac",
        last_event_id="1-0",
    )
    # The record knows every field it was given: nothing in the hash is read by string key.
    assert set(fields) <= set(SNAPSHOT_FIELDS) | set(MARKER_FIELDS)


def test_job_record_when_markers_absent_or_empty_then_none_or_zero() -> None:
    record = JobRecord.from_fields({**SNAPSHOT, "s3_key": "", "size_bytes": "", "task_id": ""})
    assert record.s3_key is None and record.task_id is None and record.spool_path is None
    assert record.size_bytes == 0 and record.deliveries == 0
    assert record.prepared is None and record.upload_started is False
    assert record.worker_pid is None and record.duration_ms is None


def test_job_record_when_snapshot_fields_missing_then_refused() -> None:
    with pytest.raises(ValidationError):
        JobRecord.from_fields({"deliveries": "1"})


def test_prepared_file_when_written_as_markers_then_read_back_equal() -> None:
    prepared = PreparedFile(Path("/spool/j.prepared.ogg"), "ogg", "audio/ogg", 7)
    assert PreparedFile.from_fields(prepared.markers()) == prepared


@pytest.mark.parametrize(
    "missing",
    ["prepared_path", "prepared_extension", "prepared_content_type", "prepared_size"],
)
def test_prepared_file_when_a_marker_is_missing_then_none(missing: str) -> None:
    markers = PreparedFile(Path("/p"), "flac", "audio/flac", 7).markers()
    assert PreparedFile.from_fields({k: v for k, v in markers.items() if k != missing}) is None
