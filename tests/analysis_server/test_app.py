"""The analysis server over real HTTP: a uvicorn process reading from moto's S3 server.

The session server runs with ANALYSIS_MIN_SECONDS=1.0 (conftest's stack_env). Two more servers
run with other settings (this package's conftest): one with tiny limits (413/too long), one
pointed at a port where no S3 listens (503s).
"""

from __future__ import annotations

import io
import json
import time
import warnings
import wave
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from devtools import stack
from tests.analysis_server.http import (
    AUTH,
    NDJSON,
    Upload,
    assert_error,
    body_for,
    take_key,
    worker_client,
)
from tests.helpers import hostile_media, memory


def wav_bytes(
    *, hz: float = 440.0, seconds: float = 1.5, rate: int = 22_050, channels: int = 2
) -> bytes:
    t = np.arange(round(seconds * rate)) / rate
    mono = (0.5 * np.sin(2 * np.pi * hz * t) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(np.repeat(mono[:, None], channels, axis=1).tobytes())
    return buffer.getvalue()


def mp3_bytes(wav: bytes) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # pydub imports audioop
        from pydub import AudioSegment

    out = io.BytesIO()
    AudioSegment.from_file(io.BytesIO(wav), format="wav").export(out, format="mp3")
    return out.getvalue()


# --- health --------------------------------------------------------------------------------


def test_healthz_when_running_then_ok(client: httpx.Client) -> None:
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_when_bucket_reachable_then_ready_with_latency(client: httpx.Client) -> None:
    response = client.get("/readyz")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert body["s3"]["ok"] is True
    assert body["s3"]["latency_ms"] >= 0


# --- analysis ------------------------------------------------------------------------------


def test_analyze_when_wav_then_200_with_duration_rate_channels_and_features(
    client: httpx.Client, upload: Upload
) -> None:
    audio = wav_bytes(seconds=1.5, rate=22_050, channels=2)
    key = upload(audio)

    started = time.monotonic()
    response = client.post("/analyze", json=body_for(key))
    elapsed = time.monotonic() - started

    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    result = response.json()
    assert (result["job_id"], result["token_id"], result["key"]) == (
        body_for(key)["job_id"],
        "tok-1",
        key,
    )
    assert result["bytes"] == len(audio)
    assert result["analysis_version"]
    assert abs(result["duration_ms"] - 1500) <= 10
    assert (result["sample_rate"], result["channels"], result["sample_width"]) == (22_050, 2, 2)
    assert result["loudness_dbfs"] == pytest.approx(-9.03, abs=0.05)
    assert result["peak_dbfs"] == pytest.approx(-6.02, abs=0.05)
    assert result["silence_ratio"] == 0.0
    assert result["clipping_ratio"] == 0.0
    assert len(result["voiced_segments"]) == 1
    assert result["segments_per_minute"] == pytest.approx(40, abs=1)  # one in 1.5 s
    assert result["pitch_hz"] == pytest.approx(440, rel=0.02)
    assert result["pitch_low_hz"] == pytest.approx(440, rel=0.02)
    assert result["pitch_high_hz"] == pytest.approx(440, rel=0.02)
    # A half-scale sine reads -9.03 LUFS per channel at 997 Hz (BS.1770's calibration), +3.01
    # for two channels; at 440 Hz the K filter's shelf lifts ≈ 0.63 dB less: -6.65.
    assert result["loudness_lufs"] == pytest.approx(-6.65, abs=0.1)
    assert result["quality"] == {"ok": True, "warnings": []}
    assert result["sync"] is None  # no reference stored for tok-1
    # The stack runs with ANALYSIS_MIN_SECONDS=1.0: the floor holds for plain JSON too.
    assert elapsed >= 1.0


def test_analyze_when_short_clipped_take_then_quality_warns_in_plain_language(
    limited_url: str, upload: Upload
) -> None:
    t = np.arange(8_000) / 16_000
    clipped = np.clip(2 * np.sin(2 * np.pi * 300 * t), -1, 1)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16_000)
        out.writeframes((clipped * 32767).astype("<i2").tobytes())
    key = upload(buffer.getvalue())

    response = httpx.post(f"{limited_url}/analyze", headers=AUTH, json=body_for(key), timeout=30)

    assert response.status_code == 200, response.text
    quality = response.json()["quality"]
    assert quality["ok"] is False
    assert [warning["code"] for warning in quality["warnings"]] == ["clipped", "too_short"]
    assert all(warning["message"].endswith(".") for warning in quality["warnings"])


def test_analyze_when_accept_ndjson_then_rising_progress_lines_then_result_line(
    client: httpx.Client, upload: Upload
) -> None:
    key = upload(wav_bytes(seconds=1.0, rate=16_000, channels=1))

    with client.stream(
        "POST", "/analyze", json=body_for(key), headers={"Accept": NDJSON}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith(NDJSON)
        arrivals: list[float] = []
        lines: list[dict[str, Any]] = []
        for raw in response.iter_lines():
            if raw:
                arrivals.append(time.monotonic())
                lines.append(json.loads(raw))

    progress, final = lines[:-1], lines[-1]
    assert len(progress) >= 6  # decoded + one per stage at least
    assert all(set(line) == {"progress", "stage"} for line in progress)
    values = [line["progress"] for line in progress]
    assert all(0.0 <= value <= 1.0 for value in values)
    assert all(a <= b for a, b in pairwise(values))
    assert all(isinstance(line["stage"], str) and line["stage"] for line in progress)
    assert set(final) == {"result"}
    assert abs(final["result"]["duration_ms"] - 1000) <= 10
    assert final["result"]["channels"] == 1
    # Streamed, not buffered: with the 1 s floor the lines arrive spread out over time.
    assert arrivals[-1] - arrivals[0] >= 0.5


def test_analyze_when_mp3_then_decoded_with_ffmpeg_and_analysed(
    client: httpx.Client, upload: Upload
) -> None:
    key = upload(mp3_bytes(wav_bytes(seconds=2.0, rate=44_100, channels=2)))

    response = client.post("/analyze", json=body_for(key))

    assert response.status_code == 200, response.text
    result = response.json()
    assert abs(result["duration_ms"] - 2000) <= 60  # encoder padding, at most a frame or two
    assert (result["sample_rate"], result["channels"]) == (44_100, 2)
    assert result["pitch_hz"] == pytest.approx(440, rel=0.02)


def test_analyze_when_silent_wav_then_loudness_null_and_all_silence(
    client: httpx.Client, upload: Upload
) -> None:
    key = upload(wav_bytes(seconds=1.0, rate=8_000, channels=1, hz=0.0))

    result = client.post("/analyze", json=body_for(key)).json()

    assert result["loudness_dbfs"] is None
    assert result["peak_dbfs"] is None
    assert result["silence_ratio"] == 1.0
    assert result["voiced_segments"] == []
    assert result["pitch_hz"] is None


def test_analyze_when_object_missing_then_404_object_not_found(client: httpx.Client) -> None:
    response = client.post("/analyze", json=body_for(take_key("tok-1", "does-not-exist")))

    assert_error(response, 404, "object_not_found")


def test_analyze_when_ndjson_and_object_missing_then_plain_404_not_a_stream(
    client: httpx.Client,
) -> None:
    response = client.post(
        "/analyze", json=body_for(take_key("tok-1", "does-not-exist")), headers={"Accept": NDJSON}
    )

    assert_error(response, 404, "object_not_found")


def test_analyze_when_object_is_text_then_422_unsupported_audio_format(
    client: httpx.Client, upload: Upload
) -> None:
    key = upload(b"This is a text file, not audio.\n" * 50)

    response = client.post("/analyze", json=body_for(key))

    assert_error(response, 422, "unsupported_audio_format")


def test_analyze_when_object_is_random_bytes_then_422_unsupported_audio_format(
    client: httpx.Client, upload: Upload
) -> None:
    key = upload(np.random.default_rng(3).bytes(20_000))

    response = client.post("/analyze", json=body_for(key))

    assert_error(response, 422, "unsupported_audio_format")


@pytest.mark.parametrize(
    "body",
    [
        {"job_id": "j", "token_id": "t"},
        {"job_id": "j", "token_id": "t", "key": ""},
        {"job_id": "j", "token_id": "t", "key": ["a"]},
        {"job_id": "", "token_id": "t", "key": "audio/t/.flac"},
        [],
    ],
    ids=["no-key", "empty-key", "key-not-string", "empty-job-id", "not-an-object"],
)
def test_analyze_when_body_invalid_then_422_invalid_request(
    client: httpx.Client, body: Any
) -> None:
    assert_error(client.post("/analyze", json=body), 422, "invalid_request")


def test_analyze_when_body_not_json_then_422_invalid_request(client: httpx.Client) -> None:
    response = client.post(
        "/analyze", content=b"{not json", headers={"Content-Type": "application/json"}
    )

    assert_error(response, 422, "invalid_request")


def test_unknown_path_when_requested_then_404_in_the_error_shape(client: httpx.Client) -> None:
    assert_error(client.get("/nope"), 404, "not_found")


# --- servers with other settings (tests/analysis_server/conftest.py) -------------------


def test_analyze_when_object_over_max_bytes_then_413_audio_too_large(
    limited_url: str, upload: Upload
) -> None:
    key = upload(wav_bytes(seconds=1.0, rate=44_100, channels=1))  # ~88 KB > 50 KB

    response = httpx.post(f"{limited_url}/analyze", headers=AUTH, json=body_for(key), timeout=30)

    assert_error(response, 413, "audio_too_large")


def test_analyze_when_wav_longer_than_max_duration_then_422_audio_too_long(
    limited_url: str, upload: Upload
) -> None:
    key = upload(wav_bytes(seconds=2.0, rate=8_000, channels=1))  # 32 KB, 2 s > 1.5 s

    response = httpx.post(f"{limited_url}/analyze", headers=AUTH, json=body_for(key), timeout=30)

    assert_error(response, 422, "audio_too_long")


def test_analyze_when_mp3_longer_than_max_duration_then_422_audio_too_long(
    limited_url: str, upload: Upload
) -> None:
    key = upload(mp3_bytes(wav_bytes(seconds=3.0, rate=22_050, channels=1)))

    response = httpx.post(f"{limited_url}/analyze", headers=AUTH, json=body_for(key), timeout=30)

    assert_error(response, 422, "audio_too_long")


def test_analyze_when_storage_unreachable_then_503_storage_unavailable(no_storage_url: str) -> None:
    response = httpx.post(
        f"{no_storage_url}/analyze", headers=AUTH, json=body_for(take_key("tok-1")), timeout=30
    )

    assert_error(response, 503, "storage_unavailable")


def test_readyz_when_storage_unreachable_then_503_with_s3_not_ok(no_storage_url: str) -> None:
    started = time.monotonic()
    response = httpx.get(f"{no_storage_url}/readyz", headers=AUTH, timeout=30)

    assert response.status_code == 503
    body = response.json()
    assert body["s3"]["ok"] is False
    # Refused at once, or no answer within readiness's deadline on a loaded host: either way
    # the kind of failure only.
    assert body["s3"]["error"] == "unreachable" or body["s3"]["error"].startswith("no answer")
    assert "127.0.0.1" not in response.text, "botocore's text names the endpoint and bucket"
    assert time.monotonic() - started < 5
    # Liveness is independent of storage: the process itself is fine.
    assert httpx.get(f"{no_storage_url}/healthz", timeout=5).status_code == 200


def test_openapi_when_fetched_then_analyze_errors_use_the_error_shape(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()

    responses = spec["paths"]["/analyze"]["post"]["responses"]
    for status in ("404", "413", "422", "503"):
        schema = responses[status]["content"]["application/json"]["schema"]
        assert schema["$ref"].endswith("/ErrorBody")
    assert "application/x-ndjson" in responses["200"]["content"]


# --- only the worker, only its own objects -------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-secret", "Basic dGVzdDp0ZXN0", "Bearer"],
    ids=["none", "wrong-secret", "other-scheme", "empty"],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/analyze"),
        ("GET", "/readyz"),
        ("PUT", "/references/tok-1"),
        ("GET", "/references/tok-1"),
        ("DELETE", "/references/tok-1"),
    ],
)
def test_routes_when_caller_lacks_the_shared_secret_then_401_before_anything_is_read(
    analysis_url: str, upload: Upload, method: str, path: str, authorization: str | None
) -> None:
    key = upload(wav_bytes())
    headers = {"Authorization": authorization} if authorization else {}
    body = body_for(key) if path == "/analyze" else None

    response = httpx.request(
        method, f"{analysis_url}{path}", json=body, headers=headers, timeout=30
    )

    assert_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"


def test_healthz_when_caller_has_no_secret_then_still_200(analysis_url: str) -> None:
    # Liveness probes of a process manager carry no credentials and learn nothing from it.
    assert httpx.get(f"{analysis_url}/healthz", timeout=5).status_code == 200


def test_analyze_when_body_names_a_bucket_then_422_and_the_servers_bucket_is_the_only_one(
    client: httpx.Client, upload: Upload, s3_client: Any
) -> None:
    s3_client.create_bucket(Bucket="another-users-bucket")
    s3_client.put_object(Bucket="another-users-bucket", Key="audio/tok-1/job-1.flac", Body=b"x")
    body = {**body_for(take_key("tok-1")), "bucket": "another-users-bucket"}

    assert_error(client.post("/analyze", json=body), 422, "invalid_request")


@pytest.mark.parametrize(
    "key",
    [
        "references/tok-1",
        "audio/tok-2/job-1.flac",
        "audio/tok-1/job-2.flac",
        "audio/tok-1/job-1.flac/../../references/tok-1",
        "uploads/anything",
        "audio/tok-1/job-1.txt",
    ],
    ids=["a-reference", "other-token", "other-job", "climbing-out", "other-prefix", "other-ext"],
)
def test_analyze_when_key_is_not_this_jobs_take_then_422_invalid_request(
    client: httpx.Client, key: str
) -> None:
    body = {"job_id": "job-1", "token_id": "tok-1", "key": key}

    assert_error(client.post("/analyze", json=body), 422, "invalid_request")


def test_analyze_when_the_servers_bucket_is_missing_then_error_does_not_say_so(
    stack_env: dict[str, str], workdir: Path
) -> None:
    env = {**stack_env, "S3_BUCKET": "no-such-bucket-here", "ANALYSIS_MIN_SECONDS": "0"}
    proc = stack.analysis_proc(env, workdir).start()
    try:
        url = f"http://127.0.0.1:{proc.name.split(':')[1]}"
        response = httpx.post(
            f"{url}/analyze", headers=AUTH, json=body_for(take_key("tok-1")), timeout=30
        )
    finally:
        proc.kill()

    assert_error(response, 502, "storage_error")
    assert "bucket" not in response.text.lower()
    assert "no-such-bucket-here" not in response.text


# --- hostile objects -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "crafted",
    [
        hostile_media.concat_script("victim.wav"),
        hostile_media.hls_playlist("/etc/hostname"),
        hostile_media.concat_script("victim.wav", tag=hostile_media.id3_padding(8192)),
    ],
    ids=["concat-behind-id3", "hls-behind-id3", "concat-behind-8k-id3"],
)
def test_analyze_when_object_is_a_script_naming_other_files_then_422_unsupported(
    client: httpx.Client, upload: Upload, crafted: bytes
) -> None:
    response = client.post("/analyze", json=body_for(upload(crafted)))

    assert_error(response, 422, "unsupported_audio_format")
    assert "/" not in response.json()["detail"], "no host path in the message"


def test_put_reference_when_flac_understates_its_length_then_422_and_nothing_stored(
    fast: httpx.Client, token_id: str, tmp_path: Path
) -> None:
    bomb = hostile_media.lying_flac(tmp_path / "bomb.flac", declared=1, actual=600)

    response = fast.put(f"/references/{token_id}", content=bomb)

    assert_error(response, 422, "undecodable_audio")
    assert "declares 1.0 s" in response.json()["detail"]
    assert fast.get(f"/references/{token_id}").status_code == 404


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_put_reference_when_8_channels_of_10_minutes_then_decoded_within_300_mb(
    stack_env: dict[str, str], workdir: Path, tmp_path: Path, token_id: str
) -> None:
    # The attack's 23 KB reference, honest this time: 10 minutes of 8 channels is within the
    # duration limit, so it is decoded, but as at most 2 channels.
    bomb = hostile_media.silent_flac(tmp_path / "bomb.flac", seconds=600, channels=8)
    proc = stack.analysis_proc({**stack_env, "ANALYSIS_MIN_SECONDS": "0"}, workdir).start()
    try:
        assert proc.popen is not None
        before = memory.peak_rss_bytes(proc.popen.pid)
        with worker_client(f"http://127.0.0.1:{proc.name.split(':')[1]}", timeout=60) as http:
            response = http.put(f"/references/{token_id}", content=bomb.read_bytes())
        growth = memory.peak_rss_bytes(proc.popen.pid) - before
    finally:
        proc.kill()

    assert response.status_code == 201, response.text
    assert response.json()["channels"] == 8  # the source's; decoded as mono
    print(f"analysis server peak RSS growth: {growth / 2**20:.0f} MB")
    assert growth < 300 * 1024 * 1024, f"the analysis server grew by {growth >> 20} MB"


def test_analyze_when_no_secret_and_a_malformed_body_then_401_not_a_parse_error(
    analysis_url: str,
) -> None:
    # Nobody without the secret learns how the server parses what it is sent.
    response = httpx.post(
        f"{analysis_url}/analyze",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
        timeout=10,
    )

    assert_error(response, 401, "unauthorized")
