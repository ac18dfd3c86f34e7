"""The stages of one analysis job, each idempotent and skipped when an earlier delivery of the
task finished it (markers in the job hash), so a redelivered task resumes instead of redoing.

    prepare (pydub)         Stage.PREPARING
    upload to S3            Stage.UPLOADING   byte-level
    analysis server         Stage.ANALYZING   NDJSON progress forwarded
    store result            Stage.STORING     then completed at 100 %

Each stage's share of the progress bar comes from the stage table (yousync.core.stages).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError

from media_guard.errors import REFUSALS
from yousync.core.config import Settings
from yousync.core.errors import PermanentError, StageError, TransientError
from yousync.core.jobs import JobStore, Refused
from yousync.core.models import JobStatus
from yousync.core.record import JobRecord, PreparedFile
from yousync.core.stages import Stage
from yousync.core.storage import (
    OBJECT_PREFIX,
    ObjectStore,
    discard_upload,
    object_key,
    unlink_job_files,
)
from yousync.worker import audio
from yousync.worker.analysis_client import Analyzer
from yousync.worker.eta import EtaEstimator
from yousync.worker.progress import ProgressReporter

log = logging.getLogger(__name__)

# A staged upload fetched to this host: `<job_id>.fetched` (s3transfer's temporary name while
# it downloads and the prepared file made from it extend the name).
FETCHED_SUFFIX = ".fetched"

# The analysis server's own refusal of an oversized object counts too.
REFUSED_AUDIO = REFUSALS | {"audio_too_large"}


@dataclass
class Pipeline:
    settings: Settings
    store: JobStore
    # Seams: S3 (`Storage`) and the analysis server (`AnalysisClient`) in the worker,
    # stand-ins in tests and benchmarks.
    storage: ObjectStore
    analysis: Analyzer

    def run(self, job_id: str) -> str:
        """Run what is left of the job; returns the final status."""
        job = self.store.get(job_id)
        if job is None:
            # A staged object of the job is the staging sweep's (no record says where it is).
            log.warning("job %s: no record (expired or deleted); nothing to do", job_id)
            self.discard_upload(job_id, None)
            return "missing"
        if job.status.terminal:
            log.info("job %s: already %s; redelivery ignored", job_id, job.status.value)
            return job.status.value
        try:
            return self._run(job_id, job)
        except Refused as refused:
            if refused.reason == "missing":
                self.clean_up_deleted(job_id, job)
            raise

    def _run(self, job_id: str, job: JobRecord) -> str:
        token_id = job.token_id
        reporter = ProgressReporter(
            self.store,
            job_id,
            token_id,
            start=job.snapshot.progress,
            min_interval=self.settings.progress_min_interval_seconds,
            eta=EtaEstimator(size_bytes=job.size_bytes, history=self.store.stage_history()),
        )
        uploaded = self._already_uploaded(job)
        if uploaded is not None:
            # A previous delivery stored the object: prepare and upload are done.
            log.info("job %s: S3 object already uploaded; resuming at analysis", job_id)
            prepared, key = uploaded
            s3_url = self.storage.url(key)
        else:
            preparing, uploading = Stage.PREPARING, Stage.UPLOADING
            reporter.report(
                preparing.start, preparing, "Decoding and preparing the audio", force=True
            )
            prepared = self._prepare(job_id, job, reporter)
            reporter.report(preparing.end, preparing, "Audio prepared", force=True)
            key = object_key(token_id, job_id, prepared.extension)
            s3_url = self.storage.url(key)
            on_bytes = reporter.span(uploading, "Uploading to storage")
            reporter.report(uploading.start, uploading, "Uploading to storage", force=True)
            if job.upload_started:
                # An earlier attempt was cut off (S3 outage, killed worker) and could not abort
                # its multipart upload; abort leftovers before starting over.
                self.storage.abort_multipart_uploads(key)
            self._mark(job_id, upload_started=1)
            self.storage.upload(
                prepared.path,
                key,
                content_type=prepared.content_type,
                on_progress=on_bytes,
            )
            self._mark(job_id, s3_key=key)
            reporter.report(
                uploading.end, uploading, "Stored; requesting analysis", force=True, s3_url=s3_url
            )

        analyzing, storing = Stage.ANALYZING, Stage.STORING
        on_analysis = reporter.span(analyzing, "Analysing")
        reporter.report(analyzing.start, analyzing, "Analysing", force=True)
        result = self.analysis.analyze(
            {"job_id": job_id, "token_id": token_id, "key": key},
            on_progress=on_analysis,
        )
        reporter.report(storing.start, storing, "Saving the result", force=True)
        result = {**result, "stored": _stored_summary(job, prepared)}
        self.store.update(
            job_id,
            token_id,
            status=JobStatus.COMPLETED,
            progress=Stage.DONE.start,
            stage=Stage.DONE,
            message="Analysis complete",
            result=result,
            s3_url=s3_url,
            eta_seconds=None,
        )
        reporter.finish()
        if job.sha256:
            self.store.remember_result(token_id, job.sha256, job_id)
        # The prepared object replaces the upload: neither the spool file nor the staged
        # object is needed any more.
        self.discard_upload(job_id, job.staged_key)
        return JobStatus.COMPLETED.value

    def _mark(self, job_id: str, **markers: Any) -> None:
        """Markers the job cannot go on without: a record deleted meanwhile stops it here as
        a refused state write would."""
        if not self.store.set_markers(job_id, **markers):
            raise Refused(job_id, "missing")

    def _already_uploaded(self, job: JobRecord) -> tuple[PreparedFile, str] | None:
        """The prepared file and its object key when the object is in S3 at its full size."""
        key, prepared = job.s3_key, job.prepared
        if key and prepared and self.storage.size_of(key) == prepared.size:
            return prepared, key
        return None

    def _prepare(self, job_id: str, job: JobRecord, reporter: ProgressReporter) -> PreparedFile:
        """Decode and convert, unless a previous delivery left the prepared file behind."""
        if job.prepared is not None and job.prepared.path.exists():
            return job.prepared
        spool = self._local_upload(job_id, job, reporter)
        prepared = audio.prepare(
            spool,
            source_format=job.source_format or "",
            store_format=self.settings.audio_store_format,
            dest=spool.with_name(f"{spool.name}.prepared"),
            bounds=audio.Bounds(
                max_seconds=self.settings.max_audio_duration_seconds,
                sample_rate=self.settings.prepare_sample_rate,
                channels=self.settings.prepare_channels,
                address_space_bytes=self.settings.ffmpeg_max_memory_mb * audio.MB,
            ),
            stream_threshold_bytes=self.settings.prepare_stream_threshold_bytes,
        )
        stored = PreparedFile(
            path=prepared.path,
            extension=prepared.extension,
            content_type=prepared.content_type,
            size=prepared.size,
        )
        self.store.set_markers(job_id, **stored.markers(), duration_ms=prepared.duration_ms)
        return stored

    def _local_upload(self, job_id: str, job: JobRecord, reporter: ProgressReporter) -> Path:
        """The upload as a file on this host: fetched from S3 staging (kept for this delivery
        only: a retry may run on another host, and fetches it again), or the spool file in this
        worker's own SPOOL_DIR."""
        spool_dir = self.settings.spool_dir
        if job.staged_key:
            fetched = spool_dir / f"{job_id}{FETCHED_SUFFIX}"
            if not fetched.exists():
                preparing = Stage.PREPARING
                reporter.report(preparing.start, preparing, "Fetching the upload", force=True)
                spool_dir.mkdir(parents=True, exist_ok=True)
                self.storage.download(job.staged_key, fetched)
            return fetched
        own = spool_dir / job_id
        if own.exists():
            return own
        elsewhere = job.spool_path is not None and job.spool_path != own
        other_host = job.spool_host is not None and job.spool_host != socket.gethostname()
        if elsewhere or other_host:
            # Host paths go to the log; the job's error, which users read, says what to change.
            log.warning(
                "job %s: spooled at %s on %s; this worker reads %s on %s",
                job_id,
                job.spool_path,
                job.spool_host,
                own,
                socket.gethostname(),
            )
            raise PermanentError(
                "spool_unreachable",
                "The upload was spooled on another host or SPOOL_DIR than this worker's; "
                "workers apart from the API need UPLOAD_STAGING=s3",
            )
        raise PermanentError("spool_missing", "The uploaded file is no longer available")

    def fail(self, job_id: str, error: StageError, *, retryable: bool) -> str:
        """End the job `failed`; returns the delivery's outcome: `failed`, or why the write was
        refused — `missing` when the job was deleted (or expired) meanwhile, `terminal` when it
        ended elsewhere. Its input (spool file, staged object) stays as long as its record, so
        a retry can run it again until RESULT_RETENTION_SECONDS are over (the sweeps delete it
        once the record is gone); audio refused as such goes at once."""
        job = self.store.get(job_id)
        if job is None:
            # Deleted (or expired) meanwhile: nothing to record, nothing of it to keep.
            self.discard_upload(job_id, None)
            return "missing"
        refused_audio = error.code in REFUSED_AUDIO
        # The object goes first: whoever sees `failed` finds nothing of refused audio left.
        if refused_audio and job.s3_key:
            # Audio refused as such (too long, lying about its length, undecodable) is not
            # kept: when the analysis server is the one refusing, it is in S3 already.
            with contextlib.suppress(TransientError):
                self.storage.delete(job.s3_key)
        refused = self.store.fail(job_id, error, retryable=retryable)
        if refused == "missing":
            # A DELETE claimed the job (its input deleted under us, likely why we failed):
            # what this delivery stored goes, as after any refused write of a deleted job.
            self.clean_up_deleted(job_id, job)
            return refused
        if refused is not None:
            return refused
        if refused_audio:
            # A retry would be refused again: its input is not kept either.
            self.discard_upload(job_id, job.staged_key)
        return "failed"

    def note_retry(self, job_id: str, error: StageError, *, attempt: int, delay: float) -> None:
        job = self.store.get(job_id)
        if job is None:
            return
        with contextlib.suppress(Refused):
            self.store.update(
                job_id,
                job.token_id,
                status=JobStatus.PROCESSING,
                message=f"{error.message} — retry {attempt} in {delay:.0f}s",
                attempt=attempt,
                next_retry_in=round(delay, 2),
            )

    def wait_for_state_store(self, *, timeout: float) -> None:
        """Block until Redis answers again (it may be restarting and loading its data)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.store.ping():
                    return
            except RedisConnectionError:
                if time.monotonic() >= deadline:
                    raise
            time.sleep(0.5)

    def begin_delivery(self, job_id: str, *, worker_pid: int) -> bool:
        """Counts deliveries that started and never ended: a task that kills its own worker
        would otherwise be redelivered forever (a poison pill). False when this
        delivery must not run — the job is failed as poison instead. Only a delivery that runs
        records its pid: a refused one must not look like a running job meanwhile."""
        crashes = self.store.count_delivery(job_id, +1)
        if crashes > self.settings.task_max_deliveries:
            error = StageError("poison", f"The job crashed its worker {crashes - 1} times")
            self.fail(job_id, error, retryable=False)
            return False
        self.store.set_markers(job_id, worker_pid=worker_pid)
        return True

    def end_delivery(self, job_id: str) -> None:
        self.store.count_delivery(job_id, -1)

    def clean_up_if_cancelled(self, job_id: str) -> None:
        """After a cancellation: delete the upload (spool file, staged object) and abort an
        unfinished multipart upload. A completely stored object stays, so a retry can resume
        at the analysis."""
        job = self.store.get(job_id)
        if job is None or job.status != JobStatus.CANCELLED:
            return
        self.discard_upload(job_id, job.staged_key)
        if job.prepared is not None:
            key = object_key(job.token_id, job_id, job.prepared.extension)
            self.storage.abort_multipart_uploads(key)

    def clean_up_deleted(self, job_id: str, job: JobRecord) -> None:
        """After a DELETE (the record is gone, our write was refused as 'missing'): remove what
        this delivery stored or holds — the upload, the prepared object or an unfinished
        multipart upload of it — so nothing of the job stays. Only a job that was still
        running gets here, never one whose object deduplicated jobs share (those completed)."""
        log.info("job %s: deleted while running; removing what it stored", job_id)
        self.discard_upload(job_id, job.staged_key)
        prefix = f"{OBJECT_PREFIX}{job.token_id}/{job_id}."
        try:
            self.storage.delete_under(prefix)
        except TransientError as exc:
            # S3 is down just now: Beat's `retry_pending_deletions` deletes it once it is back.
            log.warning("job %s: deleted, its stored audio deferred (S3): %s", job_id, exc)
            self.store.defer_deletion([prefix])

    def discard_upload(self, job_id: str, staged_key: str | None) -> None:
        """Once no retry can need it (yousync.core.storage.discard_upload)."""
        discard_upload(self.storage, self.settings.spool_dir, job_id, staged_key)

    def drop_fetched(self, job_id: str) -> None:
        """At the end of every delivery: a copy fetched from S3 staging (and what was prepared
        from it) is this delivery's only, so no worker host keeps copies of jobs that went on
        elsewhere."""
        unlink_job_files(self.settings.spool_dir, f"{job_id}{FETCHED_SUFFIX}*")


def _stored_summary(job: JobRecord, prepared: PreparedFile) -> dict[str, Any]:
    uploaded = job.size_bytes
    stored = prepared.size
    return {
        "format": prepared.extension,
        "bytes": stored,
        "uploaded_bytes": uploaded,
        "saved_bytes": uploaded - stored,
    }
