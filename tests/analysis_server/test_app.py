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
from typing import Any

import httpx
import numpy as np
import pytest

from tests.analysis_server.http import NDJSON, Upload, assert_error, body_for


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
    client: httpx.Client, upload: Upload, s3_bucket: str
) -> None:
    audio = wav_bytes(seconds=1.5, rate=22_050, channels=2)
    key = upload(audio)

    started = time.monotonic()
    response = client.post("/analyze", json=body_for(key, s3_bucket))
    elapsed = time.monotonic() - started

    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    result = response.json()
    assert (result["job_id"], result["token_id"], result["key"]) == ("job-1", "tok-1", key)
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
    limited_url: str, upload: Upload, s3_bucket: str
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

    response = httpx.post(f"{limited_url}/analyze", json=body_for(key, s3_bucket), timeout=30)

    assert response.status_code == 200, response.text
    quality = response.json()["quality"]
    assert quality["ok"] is False
    assert [warning["code"] for warning in quality["warnings"]] == ["clipped", "too_short"]
    assert all(warning["message"].endswith(".") for warning in quality["warnings"])


def test_analyze_when_accept_ndjson_then_rising_progress_lines_then_result_line(
    client: httpx.Client, upload: Upload, s3_bucket: str
) -> None:
    key = upload(wav_bytes(seconds=1.0, rate=16_000, channels=1))

    with client.stream(
        "POST", "/analyze", json=body_for(key, s3_bucket), headers={"Accept": NDJSON}
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
    client: httpx.Client, upload: Upload, s3_bucket: str
) -> None:
    key = upload(mp3_bytes(wav_bytes(seconds=2.0, rate=44_100, channels=2)))

    response = client.post("/analyze", json=body_for(key, s3_bucket))

    assert response.status_code == 200, response.text
    result = response.json()
    assert abs(result["duration_ms"] - 2000) <= 60  # encoder padding, at most a frame or two
    assert (result["sample_rate"], result["channels"]) == (44_100, 2)
    assert result["pitch_hz"] == pytest.approx(440, rel=0.02)


def test_analyze_when_silent_wav_then_loudness_null_and_all_silence(
    client: httpx.Client, upload: Upload, s3_bucket: str
) -> None:
    key = upload(wav_bytes(seconds=1.0, rate=8_000, channels=1, hz=0.0))

    result = client.post("/analyze", json=body_for(key, s3_bucket)).json()

    assert result["loudness_dbfs"] is None
    assert result["peak_dbfs"] is None
    assert result["silence_ratio"] == 1.0
    assert result["voiced_segments"] == []
    assert result["pitch_hz"] is None


def test_analyze_when_object_missing_then_404_object_not_found(
    client: httpx.Client, s3_bucket: str
) -> None:
    response = client.post("/analyze", json=body_for("uploads/does-not-exist", s3_bucket))

    assert_error(response, 404, "object_not_found")


def test_analyze_when_ndjson_and_object_missing_then_plain_404_not_a_stream(
    client: httpx.Client, s3_bucket: str
) -> None:
    response = client.post(
        "/analyze", json=body_for("uploads/does-not-exist", s3_bucket), headers={"Accept": NDJSON}
    )

    assert_error(response, 404, "object_not_found")


def test_analyze_when_bucket_missing_then_404_object_not_found(client: httpx.Client) -> None:
    response = client.post("/analyze", json=body_for("any", "no-such-bucket-here"))

    assert_error(response, 404, "object_not_found")


def test_analyze_when_object_is_text_then_422_undecodable_audio(
    client: httpx.Client, upload: Upload, s3_bucket: str
) -> None:
    key = upload(b"This is a text file, not audio.\n" * 50)

    response = client.post("/analyze", json=body_for(key, s3_bucket))

    assert_error(response, 422, "undecodable_audio")


def test_analyze_when_object_is_random_bytes_then_422_undecodable_audio(
    client: httpx.Client, upload: Upload, s3_bucket: str
) -> None:
    key = upload(np.random.default_rng(3).bytes(20_000))

    response = client.post("/analyze", json=body_for(key, s3_bucket))

    assert_error(response, 422, "undecodable_audio")


@pytest.mark.parametrize(
    "body",
    [
        {"job_id": "j", "token_id": "t", "bucket": "yousync-test"},
        {"job_id": "j", "token_id": "t", "bucket": "yousync-test", "key": ""},
        {"job_id": "j", "token_id": "t", "bucket": "yousync-test", "key": ["a"]},
        {"job_id": "", "token_id": "t", "bucket": "yousync-test", "key": "k"},
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
    limited_url: str, upload: Upload, s3_bucket: str
) -> None:
    key = upload(wav_bytes(seconds=1.0, rate=44_100, channels=1))  # ~88 KB > 50 KB

    response = httpx.post(f"{limited_url}/analyze", json=body_for(key, s3_bucket), timeout=30)

    assert_error(response, 413, "audio_too_large")


def test_analyze_when_wav_longer_than_max_duration_then_422_audio_too_long(
    limited_url: str, upload: Upload, s3_bucket: str
) -> None:
    key = upload(wav_bytes(seconds=2.0, rate=8_000, channels=1))  # 32 KB, 2 s > 1.5 s

    response = httpx.post(f"{limited_url}/analyze", json=body_for(key, s3_bucket), timeout=30)

    assert_error(response, 422, "audio_too_long")


def test_analyze_when_mp3_longer_than_max_duration_then_422_audio_too_long(
    limited_url: str, upload: Upload, s3_bucket: str
) -> None:
    key = upload(mp3_bytes(wav_bytes(seconds=3.0, rate=22_050, channels=1)))

    response = httpx.post(f"{limited_url}/analyze", json=body_for(key, s3_bucket), timeout=30)

    assert_error(response, 422, "audio_too_long")


def test_analyze_when_storage_unreachable_then_503_storage_unavailable(
    no_storage_url: str, s3_bucket: str
) -> None:
    response = httpx.post(
        f"{no_storage_url}/analyze", json=body_for("uploads/any", s3_bucket), timeout=30
    )

    assert_error(response, 503, "storage_unavailable")


def test_readyz_when_storage_unreachable_then_503_with_s3_not_ok(no_storage_url: str) -> None:
    started = time.monotonic()
    response = httpx.get(f"{no_storage_url}/readyz", timeout=30)

    assert response.status_code == 503
    body = response.json()
    assert body["s3"]["ok"] is False
    assert body["s3"]["error"]
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
