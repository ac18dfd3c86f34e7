"""Receive a multipart upload straight into its sink, stopping at the size limit.

Why not `UploadFile`: Starlette spools the whole body before the handler runs and has no size
limit, so a 2 GB body would be read in full before we could say 413. Here
python-multipart's push parser sees each chunk as it arrives; the file part is hashed, sniffed
and handed to the sink (the spool file or S3 staging, yousync/api/uploads/staging.py) in
batches off the event loop, and the first byte past `MAX_UPLOAD_MB` ends the request. The sink
is committed only once the whole file passed every check, and whatever is rejected leaves
nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import anyio
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from media_guard.declared import TAIL_BYTES, declared_seconds
from yousync.api.uploads.sniff import (
    HEAD_BYTES,
    bytes_needed_to_sniff,
    sniff_audio_format,
    wav_problem,
)
from yousync.api.uploads.staging import UploadSink

FILE_FIELD = "file"
# Room for boundaries, part headers and small extra fields beyond the file itself.
MULTIPART_OVERHEAD = 64 * 1024
MAX_FIELD_BYTES = 16 * 1024
# Half a MB: one batch being written plus one arriving keeps an upload's buffers at ~1 MB.
WRITE_BATCH = 512 * 1024


def tail_after(previous: bytes, pieces: Sequence[bytes], size: int = TAIL_BYTES) -> bytes:
    """The last `size` bytes of `previous` followed by `pieces`."""
    kept: list[bytes] = []
    needed = size
    for piece in reversed(pieces):
        kept.append(piece[-needed:])
        needed -= len(kept[-1])
        if needed == 0:
            break
    else:
        kept.append(previous[-needed:] if needed else b"")
    return b"".join(reversed(kept))


class UploadRejected(Exception):
    """A client error: mapped to `{"detail", "code"}` with `status`."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class ReceivedUpload:
    """A whole, valid, committed upload; `sink` says where it is (and removes it). `fields`:
    the text fields asked for (`receive_upload(fields=...)`) that the form carried."""

    sink: UploadSink
    size: int
    sha256: str
    audio_format: str
    filename: str
    fields: Mapping[str, str] = dataclasses.field(default_factory=dict)


# Checks the text fields before the upload is committed: raising refuses the upload, and
# nothing of it stays (the sink is discarded).
FieldCheck = Callable[[Mapping[str, str]], Awaitable[None]]


def too_large(max_bytes: int) -> UploadRejected:
    """The 413 for a file over `max_bytes`. Public because deploy/render.py builds the reverse
    proxy's own 413 answer from it, so a body nginx refuses reads exactly like one the API
    refuses."""
    return UploadRejected(
        413, "file_too_large", f"The file is larger than the {max_bytes // (1024 * 1024)} MB limit"
    )


class _FilePart:
    """State of the `file` part: its sink, hash, size, and the first and last bytes for
    sniffing and for the declared duration."""

    def __init__(
        self, sink: UploadSink, filename: str, max_bytes: int, max_seconds: float | None = None
    ) -> None:
        self.sink = sink
        self.filename = filename
        self.max_bytes = max_bytes
        self.max_seconds = max_seconds
        self.hasher = hashlib.sha256()
        self.size = 0
        self.head = bytearray()
        self.tail = b""
        # The batch arriving, in the pieces it came in (see `flush`).
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.audio_format: str | None = None
        self._in_flight: asyncio.Future[None] | None = None

    def feed(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.max_bytes:
            raise too_large(self.max_bytes)
        if len(self.head) < HEAD_BYTES:
            self.head += data[: HEAD_BYTES - len(self.head)]
        # Behind an ID3 tag the verdict waits for the tag's end (or the whole sniffing window).
        if self.audio_format is None and len(self.head) >= min(
            bytes_needed_to_sniff(bytes(self.head)), HEAD_BYTES
        ):
            self._sniff()
        self.pending.append(data)
        self.pending_size += len(data)

    def _sniff(self, *, whole_file: bool = False) -> None:
        self.audio_format = sniff_audio_format(bytes(self.head), whole_file=whole_file)
        if self.audio_format is None:
            raise UploadRejected(
                415,
                "unsupported_audio_format",
                "The file is not audio we accept (WAV, MP3, FLAC, OGG/Opus, M4A/AAC, WebM)",
            )

    def _write_pending(self, pieces: list[bytes]) -> None:
        self.sink.write(pieces)
        for piece in pieces:
            self.hasher.update(piece)
        self.tail = tail_after(self.tail, pieces)

    async def flush(self, force: bool = False) -> None:
        """A batch is written and hashed in a thread while the next one arrives (file writes
        and hashlib release the GIL, so that runs on the other core). One batch in flight at
        most: an upload holds two batches at worst, and a slow disk slows the reader down."""
        if self.pending and (force or self.pending_size >= WRITE_BATCH):
            # The pieces themselves go to the thread, never joined into one buffer: grown piece
            # by piece, that buffer was reallocated ~20 times per batch, and 20 concurrent
            # uploads' growing buffers fragmented the heap (API RSS peak +49–51 MB → +43–44 MB
            # during 20 concurrent 100 MB uploads staged in S3; bench_upload_concurrency.py).
            pieces, self.pending, self.pending_size = self.pending, [], 0
            await self._drain()
            loop = asyncio.get_running_loop()
            self._in_flight = loop.run_in_executor(self.sink.executor, self._write_pending, pieces)
        if force:
            await self._drain()

    async def _drain(self) -> None:
        if self._in_flight is not None:
            # Shielded: a cancelled request must not orphan the write (discard waits for it).
            await asyncio.shield(self._in_flight)
            self._in_flight = None

    async def finish(
        self, fields: Mapping[str, str], check: FieldCheck | None = None
    ) -> ReceivedUpload:
        if self.size == 0:
            raise UploadRejected(422, "empty_file", "The file is empty")
        if self.audio_format is None:
            self._sniff(whole_file=self.size == len(self.head))
        assert self.audio_format is not None
        if self.audio_format == "wav":
            problem = wav_problem(bytes(self.head), self.size)
            if problem:
                raise UploadRejected(422, problem, f"The WAV file is not playable ({problem})")
        await self.flush(force=True)
        self._refuse_declared_too_long()
        if check is not None:
            await check(fields)
        await anyio.to_thread.run_sync(self.sink.commit)
        return ReceivedUpload(
            sink=self.sink,
            size=self.size,
            sha256=self.hasher.hexdigest(),
            audio_format=self.audio_format,
            filename=self.filename,
            fields=dict(fields),
        )

    def _refuse_declared_too_long(self) -> None:
        """A file whose header states more than MAX_AUDIO_DURATION_SECONDS gets 422 now, not a
        job that waits in the queue to be refused (six 6-hour files once held up everyone)."""
        if self.max_seconds is None or self.audio_format not in ("wav", "flac", "ogg"):
            return
        tail = self.tail if self.audio_format == "ogg" else b""
        declared = declared_seconds(self.audio_format, bytes(self.head), tail, self.size)
        if declared is not None and declared > self.max_seconds:
            raise UploadRejected(
                422,
                "audio_too_long",
                f"The audio lasts {declared:.0f} s; the limit is {self.max_seconds:g} s",
            )

    async def discard(self) -> None:
        """Waits out a write still in flight first: it could create the file after the unlink.
        Shielded: a client that hangs up must not cut the cleanup short."""
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(Exception):
                await self._drain()
            await anyio.to_thread.run_sync(self.sink.discard)


def _checked_filename(raw: bytes) -> str:
    """The client's file name is kept for display only (the spool path is the job id), but a
    name that could not be a plain file name is refused rather than silently rewritten."""
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UploadRejected(422, "invalid_filename", "The file name is not UTF-8") from None
    if (
        len(raw) > 255
        or "/" in name
        or "\\" in name
        or name in (".", "..")
        or any(ord(char) < 32 or ord(char) == 127 for char in name)
    ):
        raise UploadRejected(
            422, "invalid_filename", "The file name must be a plain name of at most 255 bytes"
        )
    return name


def _boundary(content_type: str | None) -> bytes:
    mime, params = parse_options_header(content_type or "")
    if mime != b"multipart/form-data":
        raise UploadRejected(
            415, "not_multipart", "Send the audio as multipart/form-data with a `file` field"
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise UploadRejected(422, "invalid_multipart", "The multipart body has no boundary")
    return boundary


class _PartCollector:
    """Callbacks for python-multipart: routes part data to the file part, bounds the rest."""

    def __init__(
        self,
        sink: UploadSink,
        max_bytes: int,
        max_seconds: float | None,
        wanted: Sequence[str] = (),
    ) -> None:
        self.sink = sink
        self.max_bytes = max_bytes
        self.max_seconds = max_seconds
        self.wanted = frozenset(wanted)
        self.fields: dict[str, str] = {}
        self._field: str | None = None
        self._field_value = bytearray()
        self.file: _FilePart | None = None
        self.ended = False
        self._current: _FilePart | None = None
        self._other_bytes = 0
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: self._header_field.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._header_value.extend(d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self._headers = {}
        self._current = None
        self._field = None
        self._field_value.clear()

    def _part_end(self) -> None:
        if self._field is None:
            return
        try:
            value = self._field_value.decode("utf-8")
        except UnicodeDecodeError:
            raise UploadRejected(
                422, "invalid_field", f"The `{self._field}` field is not UTF-8"
            ) from None
        if self._field in self.fields:
            raise UploadRejected(422, "invalid_field", f"Send the `{self._field}` field once")
        self.fields[self._field] = value

    def _header_end(self) -> None:
        self._headers[bytes(self._header_field).lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = params.get(b"name", b"")
        if name != FILE_FIELD.encode():
            if b"filename" in params:
                # A file under another name is a client mistake worth naming, not a big field.
                field_name = name.decode("utf-8", errors="replace")[:64]
                raise UploadRejected(
                    422, "missing_file", f"Send the audio in the `file` field, not `{field_name}`"
                )
            wanted = name.decode("utf-8", errors="replace")
            self._field = wanted if wanted in self.wanted else None
            return
        if self.file is not None:
            raise UploadRejected(422, "multiple_files", "Send exactly one `file` field")
        filename = _checked_filename(params.get(b"filename", b""))
        self.file = self._current = _FilePart(self.sink, filename, self.max_bytes, self.max_seconds)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._current is not None:
            self._current.feed(data[start:end])
            return
        self._other_bytes += end - start
        if self._other_bytes > MAX_FIELD_BYTES:
            raise UploadRejected(
                413, "field_too_large", "Form fields other than `file` are too large"
            )
        if self._field is not None:
            self._field_value.extend(data[start:end])

    def _end(self) -> None:
        self.ended = True


async def receive_upload(
    chunks: AsyncIterator[bytes],
    *,
    content_type: str | None,
    content_length: str | None,
    sink: UploadSink,
    max_bytes: int,
    max_seconds: float | None = None,
    fields: Sequence[str] = (),
    check: FieldCheck | None = None,
) -> ReceivedUpload:
    """Stream the request body into `sink`; raises `UploadRejected` on any client error
    (a header stating more than `max_seconds` of audio included), and what the sink raises
    (S3 staging unavailable: `TransientError`). The text fields named in `fields` are kept
    (other text fields are only counted against the size bound) and given to `check` before
    the upload is committed, wherever in the form they came."""
    boundary = _boundary(content_type)
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise UploadRejected(400, "invalid_content_length", "Bad Content-Length") from None
        if declared > max_bytes + MULTIPART_OVERHEAD:
            raise too_large(max_bytes)
    collector = _PartCollector(sink, max_bytes, max_seconds, fields)
    parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
    try:
        async for chunk in chunks:
            try:
                parser.write(chunk)
            except MultipartParseError:
                raise UploadRejected(
                    422, "invalid_multipart", "The multipart body is malformed"
                ) from None
            if collector.file is not None:
                await collector.file.flush()
            if collector.ended:
                break
        if not collector.ended:
            raise UploadRejected(422, "invalid_multipart", "The multipart body ended early")
        if collector.file is None:
            raise UploadRejected(422, "missing_file", "The form has no `file` field")
        return await collector.file.finish(collector.fields, check)
    except BaseException:
        if collector.file is not None:
            await collector.file.discard()
        raise
