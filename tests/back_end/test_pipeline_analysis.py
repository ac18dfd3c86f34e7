"""The whole stack with the analysis in it: the analysis server's NDJSON progress reaches the
job's SSE stream between 40 and 95 %, a stored reference puts `sync` into the job's result,
and preparation (downmix, FLAC, truncation check) shows in what is stored."""

from __future__ import annotations

import subprocess
from itertools import pairwise
from pathlib import Path

import httpx
import numpy as np
import pytest

from devtools import stack
from tests.analysis_server.http import AUTH
from tests.analysis_server.signals import delayed, needs_ffmpeg, to_wav, tone_bursts
from tests.helpers import sse
from tests.helpers.api import upload_accepted
from tests.helpers.audio import wav_bytes


def test_pipeline_when_analysis_streams_ndjson_then_sse_shows_it_between_40_and_95(
    pipeline: str, token_id: str
) -> None:
    job = upload_accepted(pipeline, token_id, wav_bytes(2.0), name="line.wav", mime="audio/wav")

    snapshots = [event.json for event in sse.stream(f"{pipeline}{job['progress_url']}")]

    assert snapshots[-1]["status"] == "completed"
    analysing = [snap for snap in snapshots if snap["stage"] == "analyzing"]
    values = [snap["progress"] for snap in analysing]
    assert values[0] == 40, "the stage boundary is written first"
    assert all(40 <= value < 95 for value in values)
    assert all(a <= b for a, b in pairwise(values))
    # Forwarded NDJSON lines, not just the boundaries: several distinct steps inside the span,
    # each naming the analysis server's own stage.
    inside = [snap for snap in analysing if 40 < snap["progress"] < 95]
    assert len({snap["progress"] for snap in inside}) >= 3, values
    forwarded = {snap["message"] for snap in inside}
    assert any(message.startswith("Analysing (") for message in forwarded), forwarded
    after = [snap["progress"] for snap in snapshots[snapshots.index(analysing[-1]) + 1 :]]
    assert after and all(value >= 95 for value in after)

    result = snapshots[-1]["result"]
    assert result["quality"]["ok"] is True
    assert result["loudness_lufs"] is not None
    assert result["pitch_hz"] == pytest.approx(440, rel=0.02)
    assert result["sync"] is None


def test_pipeline_when_reference_stored_then_result_has_sync_of_the_late_stereo_take(
    pipeline: str, token_id: str, analysis_url: str
) -> None:
    reference = to_wav(tone_bursts(1))  # 16 kHz mono, 4 s
    stored = httpx.put(
        f"{analysis_url}/references/{token_id}", content=reference, headers=AUTH, timeout=30
    )
    assert stored.status_code == 201, stored.text
    # The take: the same line 250 ms late, recorded in stereo at 44.1 kHz.
    take = delayed(tone_bursts(1, rate=44_100), 250, rate=44_100)
    content = to_wav(np.stack([take, take], axis=1), 44_100)

    job = upload_accepted(pipeline, token_id, content)
    done = httpx.get(f"{pipeline}{job['result_url']}?wait=30", timeout=40).json()

    assert done["status"] == "completed", done
    result = done["result"]
    assert result["sync"]["offset_ms"] == pytest.approx(250, abs=20)
    assert result["sync"]["sync_score"] >= 90
    # Prepared per settings before the analysis saw it: downmixed to mono FLAC, same rate.
    assert (result["channels"], result["sample_rate"]) == (1, 44_100)
    assert result["stored"]["format"] == "flac"
    assert result["stored"]["uploaded_bytes"] == len(content)
    assert result["stored"]["saved_bytes"] == len(content) - result["stored"]["bytes"]
    assert result["stored"]["saved_bytes"] > len(content) // 2


@needs_ffmpeg
def test_pipeline_when_flac_upload_is_cut_short_then_job_fails_truncated_audio(
    pipeline: str, token_id: str, spool_dir: Path, tmp_path: Path
) -> None:
    wav = tmp_path / "line.wav"
    wav.write_bytes(wav_bytes(4.0))
    # Into a file, not a pipe: only a seekable output gets its total length in the header.
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(wav), str(tmp_path / "line.flac")], check=True
    )
    flac = (tmp_path / "line.flac").read_bytes()

    job = upload_accepted(
        pipeline, token_id, flac[: len(flac) // 2], name="take.flac", mime="audio/flac"
    )
    done = httpx.get(f"{pipeline}{job['result_url']}?wait=30", timeout=40).json()

    assert done["status"] == "failed"
    assert done["error"]["code"] == "truncated_audio"
    assert done["error"]["retryable"] is False
    assert "declares 4.0 s" in done["error"]["message"]
    # The failure is written first, the spool discarded just after: allow that moment.
    stack.wait_until(
        lambda: not list(spool_dir.glob(f"{job['job_id']}*")),
        timeout=5,
        what="the spool file of a permanently failed job to be removed",
    )
