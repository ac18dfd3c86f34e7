"""Hostile uploads against the running stack: the API, a Celery worker, the analysis server,
moto's S3 and the real ffmpeg. Each test reproduces one finding of an attack on a private copy
of the stack, and checks it is refused with a clear code, without a trace in S3 and without
naming a host path.

The speed side (a short job queued behind six 6-hour files) is measured in
`bench/bench_hostile_media.py`; here only the outcome of every job is checked.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from devtools import stack
from tests.helpers import hostile_media, memory
from tests.helpers.audio import wav_bytes


def submit(base: str, token_id: str, content: bytes, name: str = "take.mp3") -> httpx.Response:
    return httpx.post(
        f"{base}/tokens/{token_id}/upload-audio",
        files={"file": (name, content, "application/octet-stream")},
        timeout=30,
    )


def outcome(base: str, token_id: str, content: bytes, name: str = "take.mp3") -> dict[str, Any]:
    """Upload, then wait for the job's end; returns its final snapshot."""
    accepted = submit(base, token_id, content, name)
    assert accepted.status_code == 202, accepted.text
    job = accepted.json()
    done = httpx.get(f"{base}{job['result_url']}?wait=60", timeout=70).json()
    assert done["status"] in ("completed", "failed"), done
    return dict(done)


def stored_keys(s3_client: Any, bucket: str, token_id: str) -> list[str]:
    listed = s3_client.list_objects_v2(Bucket=bucket, Prefix=f"audio/{token_id}/")
    uploads = s3_client.list_multipart_uploads(Bucket=bucket, Prefix=f"audio/{token_id}/")
    return [o["Key"] for o in listed.get("Contents", [])] + [
        u["Key"] for u in uploads.get("Uploads", [])
    ]


def assert_refused(done: dict[str, Any], code: str) -> None:
    assert done["status"] == "failed", done
    assert done["error"]["code"] == code, done["error"]
    assert done["error"]["retryable"] is False
    assert "/" not in done["error"]["message"], "no host path in what the user sees"


# --- formats that name other files -----------------------------------------------------------


def test_upload_when_id3_tag_hides_a_concat_script_then_415_at_once(
    pipeline: str, token_id: str, redis_client: Any
) -> None:
    # The attack's 137-byte file: an empty ID3 tag, then an ffconcat script.
    response = submit(pipeline, token_id, hostile_media.concat_script("another-job-id"))

    assert response.status_code == 415, response.text
    assert response.json()["code"] == "unsupported_audio_format"
    assert redis_client.dbsize() == 0 or not redis_client.keys("*job*")


@pytest.mark.parametrize("script", ["concat", "hls"])
def test_job_when_a_large_id3_tag_hides_a_script_naming_another_file_then_refused_not_read(
    pipeline: str, token_id: str, spool_dir: Path, s3_client: Any, s3_bucket: str, script: str
) -> None:
    # Another user's upload waiting in the spool, and a tag larger than the API's sniffing
    # window, so only the worker's look behind it can tell what follows.
    victim = spool_dir / str(uuid.uuid4())
    victim.write_bytes(wav_bytes(2.0, freq=330.0))
    tag = hostile_media.id3_padding(8192)
    if script == "concat":
        crafted = hostile_media.concat_script(victim.name, tag=tag)
    else:
        crafted = hostile_media.hls_playlist(str(victim), tag=tag)
    try:
        done = outcome(pipeline, token_id, crafted)
    finally:
        victim.unlink()

    assert_refused(done, "unsupported_audio_format")
    assert stored_keys(s3_client, s3_bucket, token_id) == []


# --- lengths that lie, and lengths above the limit -------------------------------------------


def worker_peaks(worker: stack.Proc) -> dict[int, int]:
    assert worker.popen is not None
    return memory.children_peaks(worker.popen.pid)


def analysis_peak(analysis: stack.Proc) -> dict[int, int]:
    assert analysis.popen is not None
    return {analysis.popen.pid: memory.peak_rss_bytes(analysis.popen.pid)}


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_job_when_flac_declares_1_s_but_holds_10_min_of_8_channels_then_refused_before_s3(
    pipeline: str,
    token_id: str,
    worker_service: stack.Proc,
    s3_client: Any,
    s3_bucket: str,
    tmp_path: Path,
) -> None:
    bomb = hostile_media.lying_flac(tmp_path / "bomb.flac", declared=1, actual=600)
    assert len(bomb) < 30_000  # the attack's 23 KB
    before = worker_peaks(worker_service)

    done = outcome(pipeline, token_id, bomb, "bomb.flac")

    growth = memory.largest_growth(before, worker_peaks(worker_service))
    assert_refused(done, "audio_longer_than_declared")
    assert stored_keys(s3_client, s3_bucket, token_id) == []
    print(f"worker child peak RSS growth under the FLAC bomb: {growth / 2**20:.1f} MB")
    assert growth < 300 * 1024 * 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_job_when_10_min_of_8_channels_in_23_kb_then_completes_as_mono_within_300_mb_each(
    pipeline: str,
    token_id: str,
    worker_service: stack.Proc,
    analysis_service: stack.Proc,
    tmp_path: Path,
) -> None:
    # The same bomb, honest about its length: within the limit, so it is analysed, but it
    # costs what 10 minutes of mono costs, not 8 channels' worth.
    bomb = hostile_media.silent_flac(tmp_path / "honest.flac", seconds=600, channels=8)
    worker_before, analysis_before = worker_peaks(worker_service), analysis_peak(analysis_service)

    done = outcome(pipeline, token_id, bomb.read_bytes(), "honest.flac")

    worker_growth = memory.largest_growth(worker_before, worker_peaks(worker_service))
    analysis_growth = memory.largest_growth(analysis_before, analysis_peak(analysis_service))
    print(
        f"10 min x 8 ch: worker child +{worker_growth / 2**20:.0f} MB, "
        f"analysis server +{analysis_growth / 2**20:.0f} MB"
    )
    assert done["status"] == "completed", (done.get("error"), done.get("message"))
    assert (done["result"]["channels"], done["result"]["duration_ms"]) == (1, 600_000)
    assert worker_growth < 300 * 1024 * 1024
    assert analysis_growth < 300 * 1024 * 1024


def test_upload_when_header_declares_6_hours_then_422_at_once_and_nothing_kept(
    pipeline: str, token_id: str, spool_dir: Path, redis_client: Any, tmp_path: Path
) -> None:
    # Never a job: it cannot wait in anyone's way in the queue.
    long = hostile_media.silent_flac(tmp_path / "long.flac", seconds=6 * 3600, rate=8000)
    spooled_before = set(spool_dir.iterdir())

    response = submit(pipeline, token_id, long.read_bytes(), "long.flac")

    assert response.status_code == 422, response.text
    assert response.json() == {
        "detail": "The audio lasts 21600 s; the limit is 600 s",
        "code": "audio_too_long",
    }
    assert set(spool_dir.iterdir()) == spooled_before
    assert not redis_client.keys("*")


def test_job_when_no_length_is_declared_and_audio_runs_past_the_limit_then_audio_too_long(
    pipeline: str, token_id: str, s3_client: Any, s3_bucket: str
) -> None:
    # The decode stops a second past the limit instead of running to the end.
    done = outcome(pipeline, token_id, hostile_media.piped_flac(900), "piped.flac")

    assert_refused(done, "audio_too_long")
    assert stored_keys(s3_client, s3_bucket, token_id) == []


def test_queue_when_six_6_hour_files_of_unstated_length_wait_ahead_then_short_job_completes(
    pipeline: str, s3_client: Any, s3_bucket: str
) -> None:
    # Their length unstated, they pass the API and are refused by the worker, each after
    # decoding just past the limit rather than six hours.
    long = hostile_media.piped_flac(6 * 3600)
    attacker, user = f"tok-{uuid.uuid4().hex[:8]}", f"tok-{uuid.uuid4().hex[:8]}"
    queued = [submit(pipeline, attacker, long + bytes([n]), "long.flac") for n in range(6)]
    assert all(response.status_code == 202 for response in queued)

    short = outcome(pipeline, user, wav_bytes(3.0), "short.wav")

    assert short["status"] == "completed", short
    for response in queued:
        done = httpx.get(f"{pipeline}{response.json()['result_url']}?wait=60", timeout=70).json()
        assert_refused(done, "audio_too_long")
    assert stored_keys(s3_client, s3_bucket, attacker) == []
