"""Where an upload waits for its worker: the spool (a file on the API's host) or S3 staging.

`UPLOAD_STAGING=spool` (the single-host default) writes the upload to SPOOL_DIR, and the worker
must read that same directory. `UPLOAD_STAGING=s3` sends it to `incoming/<job_id>` in the bucket
while it arrives, so a worker on any host can fetch it and an API host that dies loses nothing
it has answered 202 for.

Why parts go through a scratch file: S3 wants multipart parts of at least 5 MiB, and holding a
part in memory for each of 20 concurrent uploads would cost 100–200 MB (the spool path holds
~1 MB per upload). Each part is written to an unnamed temporary file in SPOOL_DIR (O_TMPFILE:
nothing to clean up after a crash) and streamed from there by a thread of a shared pool, while
the next part arrives into a second file. At most two parts per upload sit on the API's disk,
and only while the request lasts. A file smaller than one part is sent as one PUT.

Every sink method runs in a thread (the receiver calls `write` from its write batches, and
`commit`/`discard` through anyio), in order, never two at once for one sink. A sink's failure to
reach S3 is a `TransientError`, which the submission answers with 503.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import tempfile
import zlib
from collections.abc import Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Protocol

from yousync.api.uploads.writeback import start_writeback
from yousync.core.config import Settings
from yousync.core.record import JobRecord
from yousync.core.storage import MB, discard_upload, staged_key

log = logging.getLogger(__name__)

# Threads sending parts, for all uploads of the process together (and connections to S3).
PART_SENDERS = 32


class UploadSink(Protocol):
    # Where `write` runs (None: the event loop's default executor).
    executor: Executor | None

    def write(self, pieces: Sequence[bytes]) -> None:
        """Append the next bytes of the file: one batch, in the pieces it arrived in."""
        ...

    def commit(self) -> None:
        """The upload is valid: make it whole and durable before the 202."""
        ...

    def discard(self) -> None:
        """Leave nothing behind, whether committed or not. Never raises."""
        ...

    def markers(self) -> dict[str, str]:
        """The job-hash fields that tell the worker where the upload is."""
        ...


class StagingStore(Protocol):
    """What staging needs of S3 (`yousync.core.storage.Storage`; a fake in unit tests)."""

    def put_file(self, body: IO[bytes], key: str, *, crc32: int) -> None: ...

    def start_multipart(self, key: str) -> str: ...

    def upload_part(
        self, key: str, upload_id: str, number: int, body: IO[bytes], *, crc32: int
    ) -> str: ...

    def complete_multipart(self, key: str, upload_id: str, etags: list[str]) -> None: ...

    def abort_multipart_upload(self, key: str, upload_id: str) -> None: ...

    def delete(self, key: str) -> None: ...

    def size_of(self, key: str) -> int | None: ...

    def delete_under(self, prefix: str) -> list[str]: ...


class SpoolSink:
    """The upload as a file in SPOOL_DIR, written back to disk as it arrives and fsynced at
    commit (yousync/api/uploads/writeback.py says why)."""

    executor: Executor | None = None  # a page-cache copy: the loop's default pool keeps up

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: IO[bytes] | None = None

    def write(self, pieces: Sequence[bytes]) -> None:
        if self._handle is None:
            self._handle = self.path.open("xb")
        offset = self._handle.tell()
        for piece in pieces:
            self._handle.write(piece)
        # In the page cache first, then the disk starts on it while the next batch arrives:
        # the fsync before the 202 is left only the tail.
        self._handle.flush()
        start_writeback(self._handle.fileno(), offset, self._handle.tell() - offset)

    def commit(self) -> None:
        if self._handle is not None:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            self._handle = None

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            if self._handle is not None:
                self._handle.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def markers(self) -> dict[str, str]:
        # The host too: a worker elsewhere can then say why it cannot read the file.
        return {"spool_path": str(self.path), "spool_host": socket.gethostname()}


class S3StagingSink:
    """The upload as `incoming/<job_id>`: parts of `part_bytes` sent while the next arrives."""

    def __init__(
        self,
        store: StagingStore,
        key: str,
        *,
        part_bytes: int,
        scratch_dir: Path,
        senders: ThreadPoolExecutor,
        writers: Executor | None = None,
    ) -> None:
        self.key = key
        self.executor = writers
        self._store = store
        self._part_bytes = part_bytes
        self._scratch_dir = scratch_dir
        self._senders = senders
        self._part: IO[bytes] | None = None
        self._part_size = 0
        self._part_crc = 0
        self._upload_id: str | None = None
        self._etags: list[str] = []
        self._in_flight: Future[str] | None = None
        self._committed = False

    def write(self, pieces: Sequence[bytes]) -> None:
        for piece in pieces:
            if self._part is None:
                # Closed by `_send` once the part is sent, or by `discard`.
                self._part = tempfile.TemporaryFile(dir=self._scratch_dir)  # noqa: SIM115
            self._part.write(piece)
            self._part_size += len(piece)
            # The part's checksum while its bytes are at hand: botocore would otherwise read
            # the part once more to compute it before sending, 1 MiB at a time per thread.
            self._part_crc = zlib.crc32(piece, self._part_crc)
            if self._part_size >= self._part_bytes:
                self._send_part()

    def _send_part(self) -> None:
        part, self._part, self._part_size = self._part, None, 0
        crc32, self._part_crc = self._part_crc, 0
        assert part is not None
        try:
            # One part in flight at most: a slow S3 slows the reader down, not the disk filling.
            self._wait_for_part()
            if self._upload_id is None:
                self._upload_id = self._store.start_multipart(self.key)
        except BaseException:
            part.close()
            raise
        self._in_flight = self._senders.submit(
            self._send, self._upload_id, len(self._etags) + 1, part, crc32
        )

    def _send(self, upload_id: str, number: int, part: IO[bytes], crc32: int) -> str:
        with part:
            return self._store.upload_part(self.key, upload_id, number, part, crc32=crc32)

    def _wait_for_part(self) -> None:
        if self._in_flight is not None:
            in_flight, self._in_flight = self._in_flight, None
            self._etags.append(in_flight.result())

    def commit(self) -> None:
        if self._upload_id is None:
            # Smaller than one part: a single PUT (the receiver refuses empty files earlier).
            part, self._part = self._part, None
            assert part is not None
            with part:
                self._store.put_file(part, self.key, crc32=self._part_crc)
        else:
            if self._part_size:
                self._send_part()
            self._wait_for_part()
            self._store.complete_multipart(self.key, self._upload_id, self._etags)
        self._committed = True

    def discard(self) -> None:
        """A failed part's error was raised already; here it only must not stop the cleanup.
        What S3 refuses now (it may be the reason we are here) the staging sweep removes later:
        an unfinished multipart upload, or an object without a job."""
        with contextlib.suppress(Exception):
            self._wait_for_part()
        if self._part is not None:
            self._part.close()
            self._part = None
        try:
            if self._committed:
                self._store.delete(self.key)
            elif self._upload_id is not None:
                self._store.abort_multipart_upload(self.key, self._upload_id)
        except Exception as exc:
            log.warning("staged upload %s left for the sweep: %r", self.key, exc)

    def markers(self) -> dict[str, str]:
        return {"staged_key": self.key}


class UploadStaging:
    """The API process's staging: makes each upload's sink, and finds or removes a job's
    upload for cancel and retry. Every method blocks: call it from a thread."""

    def __init__(
        self, settings: Settings, store: StagingStore, *, senders: int = PART_SENDERS
    ) -> None:
        self.settings = settings
        self.store = store
        self._senders = ThreadPoolExecutor(senders, thread_name_prefix="s3-staging")
        # A write blocks while its upload's previous part is still being sent. In the loop's
        # default pool (min(32, cores + 4) threads: 6 here) a few slow uploads would hold
        # every thread and stall the writes of all others; a pool of their own, one thread per
        # sender, never runs short while parts move.
        self._writers = ThreadPoolExecutor(senders, thread_name_prefix="s3-staging-write")

    def sink(self, job_id: str) -> UploadSink:
        spool_dir = self.settings.spool_dir
        spool_dir.mkdir(parents=True, exist_ok=True)
        if self.settings.upload_staging == "spool":
            return SpoolSink(spool_dir / job_id)
        return S3StagingSink(
            self.store,
            staged_key(job_id),
            part_bytes=self.settings.s3_multipart_threshold_mb * MB,
            scratch_dir=spool_dir,
            senders=self._senders,
            writers=self._writers,
        )

    def upload_exists(self, job: JobRecord) -> bool:
        """Whether a retry still has the upload to start from. A job remembers where it was
        staged, so this holds across a change of UPLOAD_STAGING."""
        if job.staged_key:
            return self.store.size_of(job.staged_key) is not None
        spool = job.spool_path or self.settings.spool_dir / job.job_id
        return spool.exists()

    def discard_upload(self, job: JobRecord) -> None:
        """Remove a job's upload (a queued job cancelled: no worker holds it yet). S3 being
        unavailable leaves the object to the staging sweep rather than failing the cancel."""
        discard_upload(self.store, self.settings.spool_dir, job.job_id, job.staged_key)

    def close(self) -> None:
        self._writers.shutdown(wait=False, cancel_futures=True)
        self._senders.shutdown(wait=False, cancel_futures=True)
