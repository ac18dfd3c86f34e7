"""Upload staging. The S3 sink against a recording stand-in (what it sends, in which order, what
it cleans up), then whole uploads through `receive_upload` into moto's S3 server: the object
must be the exact bytes, and every rejection must leave neither an object nor a multipart
upload behind."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import threading
import uuid
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import pytest

from tests.helpers.audio import pcm_wav
from tests.helpers.multipart import CONTENT_TYPE, multipart
from tests.yousync.api.uploads.test_receive import chunked
from yousync.api.uploads.receive import ReceivedUpload, UploadRejected, receive_upload
from yousync.api.uploads.staging import S3StagingSink, UploadStaging
from yousync.core.config import Settings
from yousync.core.errors import TransientError
from yousync.core.storage import MB, Storage

PART = 64 * 1024


class RecordingStore:
    """Keeps what each call sent; `fail_part` makes that part number's upload fail as an S3
    outage does."""

    def __init__(self, fail_part: int | None = None) -> None:
        self.calls: list[str] = []
        self.parts: dict[int, bytes] = {}
        self.objects: dict[str, bytes] = {}
        # The checksum each call was given: of the part's number, or of the object's key.
        self.crc32s: dict[int | str, int] = {}
        self.fail_part = fail_part
        self.in_flight = 0
        self.most_in_flight = 0
        self._lock = threading.Lock()

    def put_file(self, body: IO[bytes], key: str, *, crc32: int) -> None:
        body.seek(0)
        self.calls.append("put")
        self.objects[key] = body.read()
        self.crc32s[key] = crc32

    def start_multipart(self, key: str) -> str:
        self.calls.append("start")
        return "upload-1"

    def upload_part(
        self, key: str, upload_id: str, number: int, body: IO[bytes], *, crc32: int
    ) -> str:
        with self._lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            body.seek(0)
            self.calls.append(f"part {number}")
            if number == self.fail_part:
                raise TransientError("storage_unavailable", "S3 upload failed (EndpointError)")
            self.parts[number] = body.read()
            self.crc32s[number] = crc32
            return f"etag-{number}"
        finally:
            with self._lock:
                self.in_flight -= 1

    def complete_multipart(self, key: str, upload_id: str, etags: list[str]) -> None:
        self.calls.append("complete")
        assert etags == [f"etag-{number}" for number in range(1, len(etags) + 1)]
        self.objects[key] = b"".join(self.parts[number] for number in range(1, len(etags) + 1))

    def abort_multipart_upload(self, key: str, upload_id: str) -> None:
        self.calls.append("abort")

    def delete(self, key: str) -> None:
        self.calls.append("delete")
        self.objects.pop(key, None)

    def size_of(self, key: str) -> int | None:
        found = self.objects.get(key)
        return None if found is None else len(found)

    def delete_under(self, prefix: str) -> list[str]:
        gone = sorted(key for key in self.objects if key.startswith(prefix))
        for key in gone:
            del self.objects[key]
        return gone


@pytest.fixture
def senders() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(4)
    yield pool
    pool.shutdown()


def sink_on(store: RecordingStore, tmp_path: Path, senders: ThreadPoolExecutor) -> S3StagingSink:
    return S3StagingSink(
        store, "incoming/job", part_bytes=PART, scratch_dir=tmp_path, senders=senders
    )


def write_in_batches(
    sink: S3StagingSink, data: bytes, batch: int = 10_000, piece: int = 3_000
) -> None:
    """As the receiver writes: batches, each in the pieces the body arrived in."""
    for start in range(0, len(data), batch):
        chunk = data[start : start + batch]
        sink.write([chunk[at : at + piece] for at in range(0, len(chunk), piece)])


def test_s3_sink_when_smaller_than_a_part_then_one_put_of_the_exact_bytes(
    tmp_path: Path, senders: ThreadPoolExecutor
) -> None:
    store = RecordingStore()
    sink = sink_on(store, tmp_path, senders)
    data = os.urandom(PART - 1)
    write_in_batches(sink, data)
    sink.commit()
    assert store.calls == ["put"]
    assert store.objects["incoming/job"] == data
    assert sink.markers() == {"staged_key": "incoming/job"}


@pytest.mark.parametrize("size", [3 * PART + 123, 4 * PART], ids=["ragged", "whole-parts"])
def test_s3_sink_when_several_parts_then_sent_in_order_one_at_a_time_and_completed(
    tmp_path: Path, senders: ThreadPoolExecutor, size: int
) -> None:
    store = RecordingStore()
    sink = sink_on(store, tmp_path, senders)
    data = os.urandom(size)
    write_in_batches(sink, data)
    sink.commit()
    assert store.objects["incoming/job"] == data
    parts = [call for call in store.calls if call.startswith("part")]
    assert store.calls == ["start", *parts, "complete"]
    assert parts == [f"part {n}" for n in range(1, len(parts) + 1)]
    # Every part but the last has at least the part size; no empty last part.
    sizes = [len(store.parts[n]) for n in range(1, len(parts) + 1)]
    assert all(part >= PART for part in sizes[:-1]) and sizes[-1] > 0
    assert store.most_in_flight == 1  # the next part waits: two parts on disk at most
    assert list(tmp_path.iterdir()) == []  # the scratch files had no names


@pytest.mark.parametrize("size", [PART - 1, 3 * PART + 123], ids=["one-put", "parts"])
def test_s3_sink_when_sending_then_each_put_or_part_carries_the_crc32_of_its_bytes(
    tmp_path: Path, senders: ThreadPoolExecutor, size: int
) -> None:
    # Computed from the batches as they pass: botocore, given none, reads every part again.
    store = RecordingStore()
    sink = sink_on(store, tmp_path, senders)
    write_in_batches(sink, os.urandom(size))
    sink.commit()
    sent = store.objects if store.calls == ["put"] else store.parts
    assert sent
    assert {name: zlib.crc32(body) for name, body in sent.items()} == store.crc32s


def test_s3_sink_when_discarded_then_aborts_before_commit_and_deletes_after(
    tmp_path: Path, senders: ThreadPoolExecutor
) -> None:
    store = RecordingStore()
    sink = sink_on(store, tmp_path, senders)
    write_in_batches(sink, os.urandom(2 * PART + 5))
    sink.discard()
    assert store.calls[-1] == "abort" and "complete" not in store.calls

    store = RecordingStore()
    sink = sink_on(store, tmp_path, senders)
    write_in_batches(sink, os.urandom(2 * PART + 5))
    sink.commit()
    sink.discard()  # e.g. Redis refused the job after the object was whole
    assert store.calls[-1] == "delete" and store.objects == {}


def test_s3_sink_when_a_part_fails_then_the_error_surfaces_and_discard_aborts(
    tmp_path: Path, senders: ThreadPoolExecutor
) -> None:
    store = RecordingStore(fail_part=1)
    sink = sink_on(store, tmp_path, senders)
    with pytest.raises(TransientError):
        write_in_batches(sink, os.urandom(4 * PART))
        sink.commit()
    sink.discard()
    assert "complete" not in store.calls and store.calls[-1] == "abort"
    assert store.objects == {}


# Through receive_upload into moto's S3 server.


@pytest.fixture
def staging(s3_endpoint_url: str, s3_bucket: str, tmp_path: Path) -> Iterator[UploadStaging]:
    settings = Settings(
        s3_endpoint_url=s3_endpoint_url,
        s3_bucket=s3_bucket,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        s3_multipart_threshold_mb=5,
        spool_dir=tmp_path / "spool",
        upload_staging="s3",
    )
    staging = UploadStaging(settings, Storage(settings))
    yield staging
    staging.close()


def receive_staged(
    staging: UploadStaging, body: bytes, job_id: str, max_seconds: float | None = None
) -> ReceivedUpload:
    return asyncio.run(
        receive_upload(
            chunked(body),
            content_type=CONTENT_TYPE,
            content_length=None,
            sink=staging.sink(job_id),
            max_bytes=16 * MB,
            max_seconds=max_seconds,
        )
    )


def leftovers(s3_client: Any, bucket: str, job_id: str) -> dict[str, list[str]]:
    key = f"incoming/{job_id}"
    objects = s3_client.list_objects_v2(Bucket=bucket, Prefix=key).get("Contents", [])
    uploads = s3_client.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", [])
    return {
        "objects": [found["Key"] for found in objects],
        "uploads": [found["Key"] for found in uploads],
    }


def test_staged_upload_when_several_parts_then_the_object_is_the_exact_file(
    staging: UploadStaging, s3_client: Any, s3_bucket: str
) -> None:
    wav = pcm_wav(os.urandom(12 * MB + 4321), rate=44100)
    job_id = str(uuid.uuid4())

    upload = receive_staged(staging, multipart(("file", "take.wav", wav))[0], job_id)

    stored = s3_client.get_object(Bucket=s3_bucket, Key=f"incoming/{job_id}")
    assert stored["Body"].read() == wav
    assert upload.sha256 == hashlib.sha256(wav).hexdigest() and upload.size == len(wav)
    assert upload.sink.markers() == {"staged_key": f"incoming/{job_id}"}
    assert staging.store.size_of(f"incoming/{job_id}") == len(wav)
    assert leftovers(s3_client, s3_bucket, job_id) == {
        "objects": [f"incoming/{job_id}"],
        "uploads": [],
    }
    upload.sink.discard()
    assert leftovers(s3_client, s3_bucket, job_id) == {"objects": [], "uploads": []}


def test_staged_upload_when_limit_passed_after_parts_were_sent_then_413_and_nothing_left(
    staging: UploadStaging, s3_client: Any, s3_bucket: str
) -> None:
    wav = pcm_wav(os.urandom(20 * MB), rate=44100)
    job_id = str(uuid.uuid4())
    with pytest.raises(UploadRejected) as rejected:
        receive_staged(staging, multipart(("file", "take.wav", wav))[0], job_id)
    assert rejected.value.code == "file_too_large"
    assert leftovers(s3_client, s3_bucket, job_id) == {"objects": [], "uploads": []}


def test_staged_upload_when_the_ogg_tail_states_too_long_then_422_and_nothing_left(
    staging: UploadStaging, s3_client: Any, s3_bucket: str, tmp_path: Path
) -> None:
    # The duration of an Ogg file is in its last page: the tail the receiver keeps in memory,
    # long after the first parts went to S3 (noise: 6 MB of Opus, more than one part).
    source = tmp_path / "take.opus"
    noise = ["-f", "lavfi", "-i", "anoisesrc=d=190:a=0.5"]
    subprocess.run(
        ["ffmpeg", "-v", "error", *noise, "-c:a", "libopus", "-b:a", "256k", str(source)],
        check=True,
    )
    assert source.stat().st_size > 5 * MB
    job_id = str(uuid.uuid4())
    with pytest.raises(UploadRejected) as rejected:
        receive_staged(
            staging, multipart(("file", "take.opus", source.read_bytes()))[0], job_id, 60.0
        )
    assert rejected.value.code == "audio_too_long"
    assert leftovers(s3_client, s3_bucket, job_id) == {"objects": [], "uploads": []}
