"""References over real HTTP (PUT/GET/DELETE against moto's S3), and the `sync` block they add
to every analysis of their token."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydub import AudioSegment

from tests.analysis_server.http import NDJSON, Upload, assert_error, body_for, worker_client
from tests.analysis_server.signals import (
    LINE,
    OTHER_LINE,
    delayed,
    espeak,
    from_wav,
    needs_espeak,
    to_wav,
    tone_bursts,
)

REFERENCE = to_wav(tone_bursts(1))


def analyse(client: httpx.Client, key: str) -> dict[str, Any]:
    response = client.post("/analyze", json=body_for(key))
    assert response.status_code == 200, response.text
    return dict(response.json())


def mp3(wav: bytes) -> bytes:
    out = io.BytesIO()
    AudioSegment.from_file(io.BytesIO(wav), format="wav").export(out, format="mp3")
    return out.getvalue()


# --- storing, reading, deleting ------------------------------------------------------------


def test_put_reference_when_wav_then_201_with_its_format_and_get_returns_the_same_bytes(
    fast: httpx.Client, token_id: str, s3_client: Any, s3_bucket: str
) -> None:
    response = fast.put(
        f"/references/{token_id}", content=REFERENCE, headers={"Content-Type": "audio/wav"}
    )

    assert response.status_code == 201, response.text
    info = response.json()
    assert info == {
        "token_id": token_id,
        "key": f"references/{token_id}",
        "bytes": len(REFERENCE),
        "content_type": "audio/wav",
        "duration_ms": 4000,
        "sample_rate": 16_000,
        "channels": 1,
    }
    stored = s3_client.get_object(Bucket=s3_bucket, Key=f"references/{token_id}")
    assert stored["Body"].read() == REFERENCE

    fetched = fast.get(f"/references/{token_id}")
    assert fetched.status_code == 200
    assert fetched.headers["content-type"] == "audio/wav"
    assert fetched.headers["x-reference-duration-ms"] == "4000"
    assert fetched.content == REFERENCE


def test_put_reference_when_one_exists_then_200_and_replaced(
    fast: httpx.Client, token_id: str
) -> None:
    assert fast.put(f"/references/{token_id}", content=REFERENCE).status_code == 201
    replacement = to_wav(tone_bursts(2, 2.0))

    response = fast.put(f"/references/{token_id}", content=replacement)

    assert response.status_code == 200
    assert response.json()["duration_ms"] == 2000
    assert fast.get(f"/references/{token_id}").content == replacement


def test_delete_reference_when_stored_then_204_then_get_and_delete_are_404(
    fast: httpx.Client, token_id: str
) -> None:
    fast.put(f"/references/{token_id}", content=REFERENCE)

    assert fast.delete(f"/references/{token_id}").status_code == 204
    assert_error(fast.get(f"/references/{token_id}"), 404, "reference_not_found")
    assert_error(fast.delete(f"/references/{token_id}"), 404, "reference_not_found")


def test_put_reference_when_not_audio_then_422_and_nothing_stored(
    fast: httpx.Client, token_id: str
) -> None:
    response = fast.put(f"/references/{token_id}", content=b"just some text\n" * 100)

    assert_error(response, 422, "unsupported_audio_format")
    assert_error(fast.get(f"/references/{token_id}"), 404, "reference_not_found")


@pytest.mark.parametrize("token", ["bad$id", "-leading-dash", "x" * 129])
def test_reference_when_token_id_unfit_for_a_key_then_422_invalid_request(
    fast: httpx.Client, token: str
) -> None:
    assert_error(fast.put(f"/references/{token}", content=REFERENCE), 422, "invalid_request")


def test_put_reference_when_over_max_bytes_then_413_by_header_and_by_streamed_count(
    limited_url: str, token_id: str
) -> None:
    big = to_wav(tone_bursts(1, 2.0))  # 64 kB; the limit is 50 kB

    def chunked() -> Iterator[bytes]:  # no Content-Length: only counting can stop it
        for start in range(0, len(big), 8192):
            yield big[start : start + 8192]

    with worker_client(limited_url) as http:
        assert_error(http.put(f"/references/{token_id}", content=big), 413, "audio_too_large")
        assert_error(http.put(f"/references/{token_id}", content=chunked()), 413, "audio_too_large")


def test_reference_when_storage_unreachable_then_503(no_storage_url: str, token_id: str) -> None:
    with worker_client(no_storage_url) as http:
        assert_error(
            http.put(f"/references/{token_id}", content=REFERENCE), 503, "storage_unavailable"
        )
        assert_error(http.get(f"/references/{token_id}"), 503, "storage_unavailable")


# --- sync in the analysis ------------------------------------------------------------------


def test_analyze_when_reference_stored_and_take_is_it_250_ms_late_then_offset_and_high_score(
    fast: httpx.Client, upload: Upload, token_id: str
) -> None:
    fast.put(f"/references/{token_id}", content=REFERENCE)
    key = upload(to_wav(delayed(tone_bursts(1), 250)), token_id)

    sync = analyse(fast, key)["sync"]

    assert sync["reference_duration_ms"] == 4000
    assert sync["offset_ms"] == pytest.approx(250, abs=20)
    assert sync["sync_score"] >= 90
    assert set(sync["components"]) == {"envelope", "timing", "sound_balance"}
    assert all(0 <= value <= 1 for value in sync["components"].values())


def test_analyze_when_take_unrelated_to_the_reference_then_low_score(
    fast: httpx.Client, upload: Upload, token_id: str
) -> None:
    fast.put(f"/references/{token_id}", content=REFERENCE)
    key = upload(to_wav(tone_bursts(2)), token_id)

    assert analyse(fast, key)["sync"]["sync_score"] < 40


def test_analyze_when_reference_deleted_then_no_sync_block(
    fast: httpx.Client, upload: Upload, token_id: str
) -> None:
    fast.put(f"/references/{token_id}", content=REFERENCE)
    fast.delete(f"/references/{token_id}")

    assert analyse(fast, upload(REFERENCE, token_id))["sync"] is None


def test_analyze_when_ndjson_and_reference_then_sync_stage_line_before_the_result(
    fast: httpx.Client, upload: Upload, token_id: str
) -> None:
    fast.put(f"/references/{token_id}", content=REFERENCE)
    key = upload(to_wav(delayed(tone_bursts(1), 250)), token_id)

    with fast.stream(
        "POST",
        "/analyze",
        json=body_for(key),
        headers={"Accept": NDJSON},
    ) as response:
        lines = [json.loads(line) for line in response.iter_lines() if line]

    stages = [line["stage"] for line in lines[:-1]]
    assert stages[-2:] == ["quality", "sync"]
    assert lines[-1]["result"]["sync"]["offset_ms"] == pytest.approx(250, abs=20)


@needs_espeak
def test_analyze_when_spoken_line_as_mp3_250_ms_late_then_offset_speech_pitch_and_no_warnings(
    fast: httpx.Client, upload: Upload, token_id: str
) -> None:
    line = espeak(LINE)
    samples, rate = from_wav(line)
    fast.put(f"/references/{token_id}", content=line, headers={"Content-Type": "audio/wav"})
    key = upload(mp3(to_wav(delayed(samples, 250, rate=rate), rate)), token_id)

    result = analyse(fast, key)

    assert result["sync"]["offset_ms"] == pytest.approx(250, abs=20)
    assert result["sync"]["sync_score"] >= 85
    # espeak's default voice speaks around 100-200 Hz, with intonation.
    assert 80 < result["pitch_low_hz"] < result["pitch_hz"] < result["pitch_high_hz"] < 300
    assert len(result["voiced_segments"]) == 2  # one per sentence
    assert result["segments_per_minute"] > 10
    assert result["quality"]["ok"] is True, result["quality"]


@needs_espeak
def test_analyze_when_another_line_is_spoken_then_low_score(
    fast: httpx.Client, upload: Upload, token_id: str
) -> None:
    fast.put(f"/references/{token_id}", content=espeak(LINE))
    key = upload(espeak(OTHER_LINE), token_id)

    assert analyse(fast, key)["sync"]["sync_score"] < 40


def test_openapi_when_fetched_then_references_documented_with_error_shapes(
    fast: httpx.Client,
) -> None:
    spec = fast.get("/openapi.json").json()

    operations = spec["paths"]["/references/{token_id}"]
    assert set(operations) == {"put", "get", "delete"}
    assert "audio/*" in operations["put"]["requestBody"]["content"]
    assert operations["get"]["responses"]["404"]["content"]["application/json"]["schema"][
        "$ref"
    ].endswith("/ErrorBody")
    assert fast.get("/docs").status_code == 200
