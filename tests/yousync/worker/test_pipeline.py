"""The pipeline in this process: the real job store on the session's redis-server, stand-ins
for S3, the analysis server and the decoder (tests/helpers/fakes.py).

Resuming a redelivered job at its first unfinished stage, leaving finished and vanished jobs
alone, stopping at once when the user cancels (at every stage boundary and within a stage) and
cleaning up after it, progress that follows the stage table and never goes back, and the
poison-pill count of deliveries.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.helpers.fakes import ANALYSIS_RESULT, FakeAnalyzer, FakeObjectStore, FakePreparer
from tests.helpers.jobs import create_job
from yousync.core import keys
from yousync.core.config import Settings
from yousync.core.errors import PermanentError, StageError, TransientError
from yousync.core.jobs import JobStore, Refused
from yousync.core.models import SNAPSHOT_FIELDS, JobStatus
from yousync.core.record import MARKER_FIELDS, PreparedFile
from yousync.core.stages import WORKED_STAGES, Stage
from yousync.core.storage import object_key, staged_key
from yousync.worker import audio, context
from yousync.worker.pipeline import Pipeline

UPLOAD = b"RIFF....WAVEfmt " + bytes(64)


@dataclass(frozen=True)
class Job:
    id: str
    token: str
    spool: Path

    @property
    def key(self) -> str:
        """Where the pipeline stores the prepared (FLAC) audio."""
        return object_key(self.token, self.id, "flac")

    def files(self) -> list[Path]:
        """The upload and its prepared copy, whichever exist."""
        return sorted(self.spool.parent.glob(f"{self.id}*"))


@pytest.fixture
def settings(redis_url: str, tmp_path: Path) -> Settings:
    # No progress throttle: every callback that raises the percent is written, so a cancel
    # lands at the very next byte or analysis line.
    return Settings(
        redis_url=redis_url,
        spool_dir=tmp_path,
        progress_min_interval_seconds=0,
        task_max_deliveries=3,
    )


@pytest.fixture
def worker_context(
    settings: Settings, redis_client: redis.Redis
) -> Iterator[context.WorkerContext]:
    """The process's worker context on the test's Redis: the pipeline's telemetry (stage
    timings) writes through it."""
    ctx = context.WorkerContext.build(settings)
    previous = context.install(ctx)
    yield ctx
    context.install(previous)
    ctx.close()


@pytest.fixture
def store(worker_context: context.WorkerContext) -> JobStore:
    return worker_context.store


@pytest.fixture
def preparer(monkeypatch: pytest.MonkeyPatch) -> FakePreparer:
    fake = FakePreparer()
    monkeypatch.setattr(audio, "prepare", fake)
    return fake


@pytest.fixture
def objects() -> FakeObjectStore:
    return FakeObjectStore()


@pytest.fixture
def analyzer() -> FakeAnalyzer:
    return FakeAnalyzer()


@pytest.fixture
def runner(
    settings: Settings, store: JobStore, objects: FakeObjectStore, analyzer: FakeAnalyzer
) -> Pipeline:
    return Pipeline(settings=settings, store=store, storage=objects, analysis=analyzer)


@pytest.fixture
def job(redis_url: str, settings: Settings, token_id: str, store: JobStore) -> Job:
    """A queued job with its upload in the spool, as the API leaves it."""
    job_id = str(uuid.uuid4())
    spool = settings.spool_dir / job_id
    spool.write_bytes(UPLOAD)
    create_job(
        redis_url,
        token_id,
        job_id,
        task_id=str(uuid.uuid4()),
        spool_path=str(spool),
        sha256="ab" * 32,
        size_bytes=len(UPLOAD),
        source_format="wav",
        filename="take.wav",
    )
    return Job(job_id, token_id, spool)


@dataclass(frozen=True)
class Rig:
    """One job and everything around it: the pipeline, its store, the fakes, the Redis."""

    runner: Pipeline
    job: Job
    store: JobStore
    objects: FakeObjectStore
    analyzer: FakeAnalyzer
    preparer: FakePreparer
    redis_client: redis.Redis


@pytest.fixture
def rig(
    runner: Pipeline,
    job: Job,
    store: JobStore,
    objects: FakeObjectStore,
    analyzer: FakeAnalyzer,
    preparer: FakePreparer,
    redis_client: redis.Redis,
) -> Rig:
    return Rig(runner, job, store, objects, analyzer, preparer, redis_client)


def events(redis_client: redis.Redis, job: Job) -> list[dict[str, str]]:
    return [fields for _, fields in redis_client.xrange(keys.job_events(job.id))]


def cancel(store: JobStore, job: Job) -> None:
    """The user's cancel, written as the API writes it (yousync.api.control.cancel_job)."""
    JobStore.update(
        store,
        job.id,
        job.token,
        status=JobStatus.CANCELLED,
        message="Cancelled on request",
        eta_seconds=None,
    )


def leave_prepared(store: JobStore, job: Job, preparer: FakePreparer) -> PreparedFile:
    """What a delivery cut off after the prepare stage left: the file and its markers."""
    made = preparer(job.spool, dest=job.spool.with_name(f"{job.spool.name}.prepared"))
    preparer.sources.clear()
    prepared = PreparedFile(made.path, made.extension, made.content_type, made.size)
    store.update(job.id, job.token, status="processing", progress=10, stage="preparing")
    store.set_markers(job.id, **prepared.markers(), duration_ms=made.duration_ms)
    return prepared


# --- (a) resuming a redelivered job -------------------------------------------------------


def test_run_when_fresh_job_then_every_stage_runs_and_job_completes(rig: Rig) -> None:
    assert rig.runner.run(rig.job.id) == "completed"

    assert rig.preparer.sources == [rig.job.spool]
    assert rig.objects.operations() == ["upload"] and rig.objects.objects == {rig.job.key: 4}
    assert rig.analyzer.payloads == [
        {"job_id": rig.job.id, "token_id": rig.job.token, "key": rig.job.key}
    ]
    record = rig.store.get(rig.job.id)
    assert record is not None and record.status == JobStatus.COMPLETED
    assert record.snapshot.result == {
        **ANALYSIS_RESULT,
        "stored": {
            "format": "flac",
            "bytes": 4,
            "uploaded_bytes": len(UPLOAD),
            "saved_bytes": len(UPLOAD) - 4,
        },
    }
    assert record.snapshot.s3_url == f"s3://fake/{rig.job.key}"
    assert record.s3_key == rig.job.key and record.upload_started
    assert rig.job.files() == []  # spool and prepared copy gone
    assert rig.redis_client.get(keys.dedupe(rig.job.token, "ab" * 32)) == rig.job.id
    # Every field the pipeline left in the hash is one the rig.job record reads.
    assert set(rig.redis_client.hgetall(keys.job(rig.job.id))) <= {*SNAPSHOT_FIELDS, *MARKER_FIELDS}


def test_run_when_earlier_delivery_prepared_the_audio_then_prepare_is_skipped(rig: Rig) -> None:
    prepared = leave_prepared(rig.store, rig.job, rig.preparer)
    rig.job.spool.unlink()  # only the prepared copy is needed now

    assert rig.runner.run(rig.job.id) == "completed"

    assert rig.preparer.sources == []
    assert rig.objects.operations() == ["upload"] and rig.objects.objects == {
        rig.job.key: prepared.size
    }


def test_run_when_prepared_marker_but_file_gone_then_prepares_again(rig: Rig) -> None:
    prepared = leave_prepared(rig.store, rig.job, rig.preparer)
    prepared.path.unlink()

    assert rig.runner.run(rig.job.id) == "completed"

    assert rig.preparer.sources == [rig.job.spool]


def test_run_when_earlier_delivery_uploaded_then_resumes_at_analysis(rig: Rig) -> None:
    prepared = leave_prepared(rig.store, rig.job, rig.preparer)
    rig.objects.objects[rig.job.key] = prepared.size
    rig.store.update(rig.job.id, rig.job.token, progress=40, stage="uploading")
    rig.store.set_markers(rig.job.id, upload_started=1, s3_key=rig.job.key)
    before = len(events(rig.redis_client, rig.job))

    assert rig.runner.run(rig.job.id) == "completed"

    assert rig.preparer.sources == []
    assert rig.objects.operations() == []  # no upload, no abort: the object is complete
    assert [p["key"] for p in rig.analyzer.payloads] == [rig.job.key]
    resumed = events(rig.redis_client, rig.job)[before:]
    assert resumed[0]["stage"] == "analyzing" and resumed[0]["progress"] == "40"
    record = rig.store.get(rig.job.id)
    assert record is not None and record.snapshot.s3_url == f"s3://fake/{rig.job.key}"


def test_run_when_stored_object_size_differs_then_uploads_again(rig: Rig) -> None:
    prepared = leave_prepared(rig.store, rig.job, rig.preparer)
    rig.objects.objects[rig.job.key] = prepared.size - 1  # a partial object of some other attempt
    rig.store.set_markers(rig.job.id, upload_started=1, s3_key=rig.job.key)

    assert rig.runner.run(rig.job.id) == "completed"

    assert rig.preparer.sources == []
    assert rig.objects.operations() == ["abort_multipart_uploads", "upload"]
    assert rig.objects.objects == {rig.job.key: prepared.size}


def test_run_when_upload_started_without_s3_key_then_leftover_multipart_aborted_before_upload(
    rig: Rig,
) -> None:
    leave_prepared(rig.store, rig.job, rig.preparer)
    rig.store.set_markers(rig.job.id, upload_started=1)  # cut off mid-upload, could not abort
    rig.objects.multipart.add(rig.job.key)

    assert rig.runner.run(rig.job.id) == "completed"

    assert rig.objects.operations() == ["abort_multipart_uploads", "upload"]
    assert rig.objects.multipart == set()


def test_run_when_upload_never_started_then_nothing_is_aborted(rig: Rig) -> None:
    assert rig.runner.run(rig.job.id) == "completed"
    assert "abort_multipart_uploads" not in rig.objects.operations()


def test_run_when_upload_fails_then_redelivery_aborts_and_completes(rig: Rig) -> None:
    def outage(fraction: float) -> None:
        if fraction >= 0.5:
            raise TransientError(
                "storage_unavailable", "S3 upload failed (EndpointConnectionError)"
            )

    rig.objects.during_upload = outage
    with pytest.raises(TransientError):
        rig.runner.run(rig.job.id)
    record = rig.store.get(rig.job.id)
    assert record is not None and record.upload_started and record.s3_key is None

    rig.objects.during_upload = None
    assert rig.runner.run(rig.job.id) == "completed"

    assert rig.preparer.sources == [rig.job.spool]  # the second delivery reused the prepared file
    assert rig.objects.operations() == ["upload", "abort_multipart_uploads", "upload"]
    assert rig.objects.multipart == set() and rig.objects.objects == {rig.job.key: 4}


# --- (b) redelivery of finished and vanished jobs -----------------------------------------


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled"])
def test_run_when_job_already_terminal_then_nothing_happens_and_status_returned(
    rig: Rig, status: str
) -> None:
    rig.store.update(
        rig.job.id, rig.job.token, status=status, progress=100 if status == "completed" else 0
    )
    before = rig.redis_client.hgetall(keys.job(rig.job.id)), events(rig.redis_client, rig.job)

    assert rig.runner.run(rig.job.id) == status

    assert (
        rig.redis_client.hgetall(keys.job(rig.job.id)),
        events(rig.redis_client, rig.job),
    ) == before
    assert rig.preparer.sources == [] and rig.objects.calls == [] and rig.analyzer.payloads == []
    assert rig.job.files() == [rig.job.spool]  # kept for a retry (the sweep deletes it later)


def test_run_when_record_missing_then_spool_discarded_and_nothing_written(
    rig: Rig, settings: Settings
) -> None:
    job_id = str(uuid.uuid4())
    (settings.spool_dir / job_id).write_bytes(UPLOAD)
    (settings.spool_dir / f"{job_id}.prepared.flac").write_bytes(b"fLaC")

    assert rig.runner.run(job_id) == "missing"

    assert list(settings.spool_dir.glob(f"{job_id}*")) == []
    assert rig.redis_client.exists(keys.job(job_id), keys.job_events(job_id)) == 0
    assert rig.preparer.sources == [] and rig.objects.calls == []


# --- (c) cancellation at every boundary ---------------------------------------------------


class CancellingStore(JobStore):
    """The real store, on which the user's cancel lands just before the first pipeline write
    that `when` picks: that write is then the first one refused. `at_cancel` keeps the job's
    hash as the cancel left it."""

    def __init__(
        self, client: redis.Redis, settings: Settings, when: Callable[[dict[str, Any]], bool]
    ) -> None:
        super().__init__(client, settings)
        self._raw = client
        self._when = when
        self.at_cancel: dict[str, str] | None = None

    def update(self, job_id: str, token_id: str, **values: Any) -> str:
        if self.at_cancel is None and self._when(values):
            self.at_cancel = {}
            super().update(
                job_id,
                token_id,
                status=JobStatus.CANCELLED,
                message="Cancelled on request",
                eta_seconds=None,
            )
            self.at_cancel = dict(self._raw.hgetall(keys.job(job_id)))
        return super().update(job_id, token_id, **values)


def _writes(stage: Stage, test: Callable[[int], bool]) -> Callable[[dict[str, Any]], bool]:
    return lambda values: values.get("stage") == stage and test(int(values["progress"]))


@dataclass(frozen=True)
class Boundary:
    """Where the cancel lands (just before the first write `when` picks) and how far the job
    had got by then."""

    when: Callable[[dict[str, Any]], bool]
    prepared: bool = True
    upload_started: bool = True
    uploaded: bool = True
    analysed: bool = True


_UPLOADING = Stage.UPLOADING
BOUNDARIES = {
    "before_prepare": Boundary(
        _writes(Stage.PREPARING, lambda p: p == Stage.PREPARING.start),
        prepared=False,
        upload_started=False,
        uploaded=False,
        analysed=False,
    ),
    "after_prepare": Boundary(
        _writes(Stage.PREPARING, lambda p: p == Stage.PREPARING.end),
        upload_started=False,
        uploaded=False,
        analysed=False,
    ),
    "before_upload": Boundary(
        _writes(_UPLOADING, lambda p: p == _UPLOADING.start),
        upload_started=False,
        uploaded=False,
        analysed=False,
    ),
    "during_upload": Boundary(
        _writes(_UPLOADING, lambda p: _UPLOADING.start < p < _UPLOADING.end),
        uploaded=False,
        analysed=False,
    ),
    "before_analysis": Boundary(
        _writes(Stage.ANALYZING, lambda p: p == Stage.ANALYZING.start), analysed=False
    ),
    "during_analysis": Boundary(_writes(Stage.ANALYZING, lambda p: p > Stage.ANALYZING.start)),
    "before_storing": Boundary(_writes(Stage.STORING, lambda _: True)),
    "before_completing": Boundary(lambda values: values.get("status") == JobStatus.COMPLETED),
}


@pytest.mark.parametrize("boundary", list(BOUNDARIES))
def test_run_when_cancelled_at_boundary_then_next_write_refused_and_clean_up_leaves_nothing(
    rig: Rig, settings: Settings, worker_context: context.WorkerContext, boundary: str
) -> None:
    at = BOUNDARIES[boundary]
    store = CancellingStore(worker_context.redis, settings, at.when)
    runner = Pipeline(settings=settings, store=store, storage=rig.objects, analysis=rig.analyzer)

    with pytest.raises(Refused) as refused:
        runner.run(rig.job.id)

    assert refused.value.reason == "terminal"
    assert store.at_cancel is not None, "the cancel never landed"
    # Nothing was written after the cancel: not the refused write, not a marker.
    assert rig.redis_client.hgetall(keys.job(rig.job.id)) == store.at_cancel
    assert events(rig.redis_client, rig.job)[-1]["status"] == "cancelled"
    assert len(rig.preparer.sources) == int(at.prepared)
    assert ("upload" in rig.objects.operations()) is at.upload_started
    assert (rig.job.key in rig.objects.objects) is at.uploaded
    assert (rig.job.key in rig.objects.multipart) is (at.upload_started and not at.uploaded)
    assert len(rig.analyzer.payloads) == int(at.analysed)
    assert rig.job.files()  # the spool is still there until the clean-up

    runner.clean_up_if_cancelled(rig.job.id)

    assert rig.job.files() == []
    assert rig.objects.multipart == set()
    aborts = [key for name, key in rig.objects.calls if name == "abort_multipart_uploads"]
    assert aborts == ([rig.job.key] if at.prepared else [])  # no prepared file: no key known yet
    assert (
        rig.job.key in rig.objects.objects
    ) is at.uploaded  # a complete object stays for a retry
    assert rig.redis_client.hgetall(keys.job(rig.job.id)) == store.at_cancel


def test_run_when_cancelled_by_the_user_mid_upload_then_next_byte_write_refused(rig: Rig) -> None:
    fractions: list[float] = []

    def user_cancels(fraction: float) -> None:
        fractions.append(fraction)
        if fraction == 0.3:
            cancel(rig.store, rig.job)

    rig.objects.during_upload = user_cancels
    with pytest.raises(Refused):
        rig.runner.run(rig.job.id)

    assert fractions == [0.1, 0.2, 0.3]  # the first byte progress after the cancel stopped it
    assert events(rig.redis_client, rig.job)[-1]["status"] == "cancelled"
    assert rig.analyzer.payloads == []
    rig.runner.clean_up_if_cancelled(rig.job.id)
    assert rig.objects.multipart == set() and rig.job.files() == []


def test_clean_up_if_cancelled_when_job_not_cancelled_then_nothing_touched(rig: Rig) -> None:
    rig.store.update(rig.job.id, rig.job.token, status="failed")
    rig.runner.clean_up_if_cancelled(rig.job.id)
    assert rig.job.files() == [rig.job.spool] and rig.objects.calls == []


# --- (d) progress follows the stage table -------------------------------------------------


@pytest.mark.parametrize("min_interval", [0.0, 0.1])
def test_run_when_job_completes_then_progress_follows_stage_table_and_never_decreases(
    rig: Rig, settings: Settings, min_interval: float
) -> None:
    throttled = settings.model_copy(update={"progress_min_interval_seconds": min_interval})
    runner = Pipeline(
        settings=throttled, store=rig.store, storage=rig.objects, analysis=rig.analyzer
    )

    assert runner.run(rig.job.id) == "completed"

    written = [(int(e["progress"]), Stage(e["stage"])) for e in events(rig.redis_client, rig.job)]
    progress = [p for p, _ in written]
    assert progress == sorted(progress), progress
    stages = list(dict.fromkeys(stage for _, stage in written))
    assert stages == [Stage.QUEUED, *WORKED_STAGES, Stage.DONE]
    for stage in WORKED_STAGES:
        spans = [p for p, s in written if s == stage]
        assert spans[0] == stage.start, stage  # each stage starts where the table says
        assert all(stage.start <= p <= stage.end for p in spans), stage
    assert max(p for p, s in written if s == Stage.PREPARING) == Stage.PREPARING.end
    assert max(p for p, s in written if s == Stage.UPLOADING) == Stage.UPLOADING.end
    assert written[-1] == (100, Stage.DONE)
    assert events(rig.redis_client, rig.job)[-1]["status"] == "completed"
    assert max(progress[:-1]) <= 99  # 100 only with `completed`


def test_run_when_job_completes_then_stage_timings_reach_the_cluster_histogram(rig: Rig) -> None:
    rig.runner.run(rig.job.id)
    counts = rig.redis_client.hgetall(keys.METRICS_STAGE_SECONDS)
    for stage in WORKED_STAGES:
        assert counts.get(f"{stage.value}|count") == "1", stage


def test_run_when_resumed_at_analysis_then_progress_goes_on_from_where_it_was(rig: Rig) -> None:
    prepared = leave_prepared(rig.store, rig.job, rig.preparer)
    rig.objects.objects[rig.job.key] = prepared.size
    rig.store.update(
        rig.job.id, rig.job.token, progress=60, stage="analyzing"
    )  # got further last time
    rig.store.set_markers(rig.job.id, upload_started=1, s3_key=rig.job.key)

    rig.runner.run(rig.job.id)

    progress = [int(e["progress"]) for e in events(rig.redis_client, rig.job)]
    assert progress == sorted(progress)


# --- (e) poison-pill counting --------------------------------------------------------------


def test_begin_delivery_when_deliveries_end_then_never_poison(
    runner: Pipeline, job: Job, store: JobStore, settings: Settings
) -> None:
    for pid in range(settings.task_max_deliveries + 2):
        assert runner.begin_delivery(job.id, worker_pid=1000 + pid) is True
        runner.end_delivery(job.id)
    record = store.get(job.id)
    assert record is not None and record.deliveries == 0 and record.status == JobStatus.QUEUED


def test_begin_delivery_when_deliveries_crashed_past_the_limit_then_job_fails_as_poison(
    runner: Pipeline, job: Job, store: JobStore, settings: Settings
) -> None:
    for crash in range(settings.task_max_deliveries):  # each delivery killed its worker
        assert runner.begin_delivery(job.id, worker_pid=1000 + crash) is True

    assert runner.begin_delivery(job.id, worker_pid=2000) is False

    record = store.get(job.id)
    assert record is not None and record.status == JobStatus.FAILED
    error = record.snapshot.error
    assert error is not None and error.code == "poison" and error.retryable is False
    assert str(settings.task_max_deliveries) in error.message
    assert record.worker_pid == 1000 + settings.task_max_deliveries - 1  # the refused one: none
    # Kept while the record lives: a retry (after a fixed release, say) can still run it.
    assert job.files() == [job.spool]


def test_begin_delivery_when_record_missing_then_runs_and_creates_no_hash(
    runner: Pipeline, redis_client: redis.Redis
) -> None:
    assert runner.begin_delivery("gone", worker_pid=1) is True
    runner.end_delivery("gone")
    assert redis_client.exists(keys.job("gone")) == 0


# --- failing ---------------------------------------------------------------------------------


def test_fail_when_analysis_refused_the_audio_then_stored_object_deleted(rig: Rig) -> None:
    rig.objects.objects[rig.job.key] = 4
    rig.store.set_markers(rig.job.id, s3_key=rig.job.key)

    rig.runner.fail(rig.job.id, PermanentError("audio_too_large", "too large"), retryable=False)

    assert rig.objects.objects == {} and rig.job.files() == []
    record = rig.store.get(rig.job.id)
    assert record is not None and record.status == JobStatus.FAILED


def test_fail_when_retryable_then_object_and_spool_kept(rig: Rig) -> None:
    rig.objects.objects[rig.job.key] = 4
    rig.store.set_markers(rig.job.id, s3_key=rig.job.key)

    rig.runner.fail(rig.job.id, StageError("analysis_unavailable", "down"), retryable=True)

    assert rig.objects.objects == {rig.job.key: 4} and rig.job.files() == [rig.job.spool]


# --- (f) where the upload waits: S3 staging, or a spool this worker may not see ---------------


@pytest.fixture
def staged(rig: Rig, redis_client: redis.Redis) -> Rig:
    """The rig's job as UPLOAD_STAGING=s3 leaves it: the upload in the object store, nothing in
    this worker's spool."""
    rig.job.spool.unlink()
    redis_client.hdel(keys.job(rig.job.id), "spool_path")
    rig.store.set_markers(rig.job.id, staged_key=staged_key(rig.job.id))
    rig.objects.staged[staged_key(rig.job.id)] = UPLOAD
    return rig


def test_run_when_staged_in_s3_then_fetched_prepared_and_the_staged_object_deleted(
    staged: Rig,
) -> None:
    fetched = staged.job.spool.with_name(f"{staged.job.id}.fetched")

    assert staged.runner.run(staged.job.id) == "completed"

    assert staged.preparer.sources == [fetched]
    assert staged.objects.operations() == [
        "download",
        "upload",
        "delete",  # the prepared object replaced the upload
    ]
    assert staged.objects.staged == {} and staged.objects.objects == {staged.job.key: 4}
    assert staged.job.files() == []


def test_run_when_staged_job_fails_then_delivery_end_drops_the_fetched_copy_and_keeps_the_object(
    staged: Rig,
) -> None:
    def outage(_: float) -> None:
        raise TransientError("analysis_unavailable", "down")

    staged.analyzer.during_analysis = outage
    with pytest.raises(TransientError):
        staged.runner.run(staged.job.id)
    assert staged.job.files() != []  # the fetched copy and what was prepared from it

    staged.runner.drop_fetched(staged.job.id)

    assert staged.job.files() == []  # a retry, on whichever host, fetches again
    assert staged.objects.staged == {staged_key(staged.job.id): UPLOAD}


def test_run_when_staged_object_gone_then_fails_permanently_as_upload_gone(staged: Rig) -> None:
    staged.objects.staged.clear()
    with pytest.raises(PermanentError) as failed:
        staged.runner.run(staged.job.id)
    assert failed.value.code == "upload_gone"


@pytest.mark.parametrize(
    ("where", "code"),
    [
        ({"spool_path": "/elsewhere/spool/JOB"}, "spool_unreachable"),
        ({"spool_host": "api-host-that-is-not-this-one"}, "spool_unreachable"),
        ({}, "spool_missing"),
    ],
    ids=["other-spool-dir", "other-host", "same-place-but-gone"],
)
def test_run_when_spool_file_not_in_this_workers_spool_then_the_error_says_why(
    rig: Rig, where: dict[str, str], code: str
) -> None:
    rig.job.spool.unlink()
    markers = {name: value.replace("JOB", rig.job.id) for name, value in where.items()}
    if markers:
        rig.store.set_markers(rig.job.id, **markers)

    with pytest.raises(PermanentError) as failed:
        rig.runner.run(rig.job.id)

    assert failed.value.code == code
    if code == "spool_unreachable":
        assert "UPLOAD_STAGING=s3" in failed.value.message
        assert "/elsewhere" not in failed.value.message  # host paths go to the log only


def test_clean_up_if_cancelled_when_staged_then_the_staged_object_is_deleted(staged: Rig) -> None:
    cancel(staged.store, staged.job)
    staged.runner.clean_up_if_cancelled(staged.job.id)
    assert staged.objects.staged == {}


# --- (g) retention of a failed job's input; a job deleted while it runs ----------------------


def test_fail_when_permanent_then_the_upload_stays_for_a_retry(rig: Rig) -> None:
    rig.runner.fail(rig.job.id, StageError("poison", "crashed its worker"), retryable=False)
    assert rig.job.files() == [rig.job.spool]


def test_fail_when_permanent_and_staged_then_the_staged_object_stays(staged: Rig) -> None:
    staged.runner.fail(staged.job.id, PermanentError("spool_missing", "gone"), retryable=False)
    assert staged.objects.staged == {staged_key(staged.job.id): UPLOAD}


def test_fail_when_the_record_was_deleted_then_the_upload_goes_and_nothing_is_written(
    rig: Rig,
) -> None:
    delete_record(rig)
    rig.runner.fail(rig.job.id, StageError("analysis_unavailable", "down"), retryable=True)
    assert rig.job.files() == []
    assert list(rig.redis_client.scan_iter(match=f"*{rig.job.id}*")) == []


def delete_record(rig: Rig) -> None:
    """What DELETE's last step leaves for the worker: no hash, no Stream."""
    rig.redis_client.delete(keys.job(rig.job.id), keys.job_events(rig.job.id))


def test_run_when_deleted_mid_upload_then_refused_missing_and_nothing_of_the_job_is_left(
    staged: Rig,
) -> None:
    def user_deletes(fraction: float) -> None:
        if fraction == 0.3:
            delete_record(staged)

    staged.objects.during_upload = user_deletes
    with pytest.raises(Refused) as stopped:
        staged.runner.run(staged.job.id)

    assert stopped.value.reason == "missing"
    assert staged.objects.multipart == set() and staged.objects.objects == {}
    assert staged.objects.staged == {}
    assert staged.job.files() == []
    assert list(staged.redis_client.scan_iter(match=f"*{staged.job.id}*")) == []


def test_run_when_deleted_mid_analysis_then_the_stored_object_is_deleted(rig: Rig) -> None:
    def user_deletes(_: float) -> None:
        delete_record(rig)

    rig.analyzer.during_analysis = user_deletes
    with pytest.raises(Refused) as stopped:
        rig.runner.run(rig.job.id)

    assert stopped.value.reason == "missing"
    assert rig.objects.objects == {} and rig.job.files() == []
    assert list(rig.redis_client.scan_iter(match=f"*{rig.job.id}*")) == []


def test_fail_when_a_delete_claimed_the_job_then_missing_cleaned_up_and_nothing_written(
    rig: Rig,
) -> None:
    """DELETE claimed the job and deleted its input under the worker, which then fails: the
    `failed` write is refused; the delivery must end as a deleted job's does (its stored object
    deleted, outcome `missing`: no callbacks drain), not as `failed`."""

    def user_deletes(_: float) -> None:
        rig.redis_client.hset(keys.job(rig.job.id), "deleting", "1")  # DELETE's claim
        raise PermanentError("spool_missing", "The uploaded file is no longer available")

    rig.analyzer.during_analysis = user_deletes
    with pytest.raises(PermanentError) as failed:
        rig.runner.run(rig.job.id)
    assert rig.objects.objects, "stored before the DELETE"
    written = events(rig.redis_client, rig.job)

    outcome = rig.runner.fail(rig.job.id, failed.value, retryable=False)

    assert outcome == "missing"
    assert rig.objects.objects == {} and rig.job.files() == []
    assert events(rig.redis_client, rig.job) == written, "no `failed` event"


def test_run_when_deleted_mid_analysis_and_s3_down_then_the_object_is_left_to_the_sweep(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's own clean-up cannot reach S3: the prefix goes into the pending deletions
    that Beat's `retry_pending_deletions` works off, so the object is not orphaned."""

    def s3_down(prefix: str) -> list[str]:
        raise TransientError("storage_unavailable", "S3 delete failed (EndpointConnectionError)")

    def user_deletes(_: float) -> None:
        delete_record(rig)
        monkeypatch.setattr(rig.objects, "delete_under", s3_down)

    rig.analyzer.during_analysis = user_deletes
    with pytest.raises(Refused):
        rig.runner.run(rig.job.id)

    assert rig.objects.objects, "S3 was down"
    prefix = f"audio/{rig.job.token}/{rig.job.id}."
    assert rig.redis_client.sismember(keys.PENDING_DELETIONS, prefix)
    rig.redis_client.srem(keys.PENDING_DELETIONS, prefix)
