"""receive_upload on real files (the spool sink): batches written and hashed in a thread while
the next ones arrive must still give the exact bytes and hash, and every way of stopping must
leave nothing. The S3 staging sink has its own tests (test_staging.py)."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.helpers import hostile_media
from tests.helpers.audio import pcm_wav
from tests.helpers.multipart import CONTENT_TYPE, multipart
from yousync.api.uploads import staging
from yousync.api.uploads.receive import (
    WRITE_BATCH,
    ReceivedUpload,
    UploadRejected,
    receive_upload,
    tail_after,
)
from yousync.api.uploads.staging import SpoolSink

MB = 1024 * 1024


def form(wav: bytes) -> bytes:
    return multipart(("file", "take.wav", wav))[0]


async def chunked(body: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]
        await asyncio.sleep(0)  # not a wait: yields to the loop between chunks, as a socket does


def receive(body: bytes, path: Path, max_mb: int = 16) -> ReceivedUpload:
    return asyncio.run(
        receive_upload(
            chunked(body),
            content_type=CONTENT_TYPE,
            content_length=None,
            sink=SpoolSink(path),
            max_bytes=max_mb * MB,
        )
    )


def spooled_path(upload: ReceivedUpload) -> Path:
    assert isinstance(upload.sink, SpoolSink)
    return upload.sink.path


def test_receive_upload_when_many_batches_then_file_and_hash_are_exact(tmp_path: Path) -> None:
    wav = pcm_wav(os.urandom(7 * WRITE_BATCH + 12345), rate=44100)
    spooled = receive(form(wav), tmp_path / "job")
    assert spooled_path(spooled).read_bytes() == wav
    assert spooled.size == len(wav)
    assert spooled.sha256 == hashlib.sha256(wav).hexdigest()
    assert spooled.audio_format == "wav"


def test_receive_upload_when_batches_are_written_then_writeback_covers_the_file_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[tuple[int, int]] = []

    def record(fd: int, offset: int, length: int) -> bool:
        assert os.fstat(fd).st_size >= offset + length  # the batch is on the file already
        asked.append((offset, length))
        return True

    monkeypatch.setattr(staging, "start_writeback", record)
    wav = pcm_wav(os.urandom(5 * WRITE_BATCH + 777), rate=44100)
    spooled = receive(form(wav), tmp_path / "job")
    assert len(asked) >= 4  # batch by batch as they are written, not once at the end
    offsets, lengths = zip(*asked, strict=True)
    assert list(offsets) == list(itertools.accumulate(lengths, initial=0))[:-1]  # no gap
    assert sum(lengths) == spooled.size == len(wav)


def test_receive_upload_when_limit_passed_after_batches_in_flight_then_413_and_no_file(
    tmp_path: Path,
) -> None:
    wav = pcm_wav(os.urandom(6 * MB), rate=44100)
    with pytest.raises(UploadRejected) as rejected:
        receive(form(wav), tmp_path / "job", max_mb=4)
    assert (rejected.value.status, rejected.value.code) == (413, "file_too_large")
    assert list(tmp_path.iterdir()) == []


def test_receive_upload_when_cancelled_with_a_write_in_flight_then_no_file_left(
    tmp_path: Path,
) -> None:
    wav = pcm_wav(os.urandom(8 * MB), rate=44100)
    body = form(wav)

    async def upload_then_cancel() -> None:
        stalled = asyncio.Event()

        async def stalls_after_batches() -> AsyncIterator[bytes]:
            async for chunk in chunked(body[: WRITE_BATCH + 64 * 1024 + 500]):
                yield chunk
            stalled.set()  # the first batch (which creates the file) was just handed to the thread
            await asyncio.Event().wait()  # the client stops sending

        task = asyncio.create_task(
            receive_upload(
                stalls_after_batches(),
                content_type=CONTENT_TYPE,
                content_length=None,
                sink=SpoolSink(tmp_path / "job"),
                max_bytes=16 * MB,
            )
        )
        await stalled.wait()
        task.cancel()  # as when the client disconnects
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(upload_then_cancel())
    assert list(tmp_path.iterdir()) == []


def receive_in_pieces(content: bytes, path: Path, *, piece: int) -> ReceivedUpload:
    body = multipart(("file", "take.mp3", content))[0]
    return asyncio.run(
        receive_upload(
            chunked(body, size=piece),
            content_type=CONTENT_TYPE,
            content_length=None,
            sink=SpoolSink(path),
            max_bytes=16 * MB,
        )
    )


@pytest.mark.parametrize("piece", [7, 4096], ids=["7-byte-pieces", "4k-pieces"])
def test_receive_upload_when_id3_tag_hides_a_script_then_415_however_the_body_is_cut(
    tmp_path: Path, piece: int
) -> None:
    # The verdict waits for the tag's end: the first 16 bytes only say "ID3".
    crafted = hostile_media.concat_script("another-job", tag=hostile_media.id3_padding(300))

    with pytest.raises(UploadRejected) as rejected:
        receive_in_pieces(crafted, tmp_path / "job", piece=piece)

    assert (rejected.value.status, rejected.value.code) == (415, "unsupported_audio_format")
    assert list(tmp_path.iterdir()) == []


def test_receive_upload_when_id3_tag_is_larger_than_the_window_then_accepted_for_the_worker(
    tmp_path: Path,
) -> None:
    # Cover art can be megabytes: the API cannot see past it, the worker looks on disk.
    content = hostile_media.id3_padding(8192) + b"\xff\xfb\x90\x64" + b"\x00" * 2000

    spooled = receive_in_pieces(content, tmp_path / "job", piece=1024)

    assert spooled.audio_format == "mp3"
    assert spooled_path(spooled).read_bytes() == content


@pytest.mark.parametrize(
    ("name", "codec"),
    [("take.wav", []), ("take.flac", []), ("take.opus", ["-c:a", "libopus"])],
    ids=["wav", "flac", "ogg-opus"],
)
@pytest.mark.parametrize(("limit", "refused"), [(2.0, True), (5.0, False)], ids=["over", "under"])
def test_receive_upload_when_header_states_a_length_over_the_limit_then_422_and_no_file(
    tmp_path: Path, name: str, codec: list[str], limit: float, refused: bool
) -> None:
    source = tmp_path / name
    sine = ["-f", "lavfi", "-i", "sine=d=3"]
    subprocess.run(["ffmpeg", "-v", "error", *sine, *codec, str(source)], check=True)
    body = multipart(("file", name, source.read_bytes()))[0]

    async def run() -> ReceivedUpload:
        return await receive_upload(
            chunked(body),
            content_type=CONTENT_TYPE,
            content_length=None,
            sink=SpoolSink(tmp_path / "job"),
            max_bytes=16 * MB,
            max_seconds=limit,
        )

    if not refused:
        assert spooled_path(asyncio.run(run())).exists()
        return
    with pytest.raises(UploadRejected) as rejected:
        asyncio.run(run())
    assert (rejected.value.status, rejected.value.code) == (422, "audio_too_long")
    assert not (tmp_path / "job").exists()


@pytest.mark.parametrize(
    ("previous", "pieces"),
    [
        (b"", [b"abcdef"]),
        (b"0123", [b"ab", b"cd"]),
        (b"0123456789", [b"a", b"bc", b""]),
        (b"01", [b"abcdefgh", b"ij"]),
        (b"0123", [b"abc", b"defgh"]),
    ],
    ids=["first-batch", "reaches-into-previous", "short-pieces", "long-piece", "exact"],
)
def test_tail_after_when_a_batch_arrives_in_pieces_then_the_last_bytes_of_all_joined(
    previous: bytes, pieces: list[bytes]
) -> None:
    assert tail_after(previous, pieces, size=8) == (previous + b"".join(pieces))[-8:]
