"""The stage runner, its pacing and the NDJSON encoding, without HTTP or S3.

These drive the async generators directly (anyio.run), which is the only way to make a stage
fail after the stream has started and check the error line the client then receives.
"""

from __future__ import annotations

import json
from itertools import pairwise
from typing import Any

import anyio
import numpy as np
import pytest

from analysis_server.analysis import (
    FINAL_PROGRESS,
    STAGES,
    Inputs,
    Pacing,
    Progress,
    Stage,
    analyse,
)
from analysis_server.app import ndjson_lines, wants_ndjson
from analysis_server.audio import DecodedAudio
from analysis_server.errors import UndecodableAudio
from analysis_server.models import AnalysisResult, AnalyzeRequest

RATE = 16_000
REQUEST = AnalyzeRequest(job_id="job-1", token_id="tok-1", key="audio/tok-1/job-1.flac")


def decoded_sine(seconds: float = 1.0, hz: float = 220.0) -> DecodedAudio:
    t = np.arange(round(seconds * RATE)) / RATE
    mono = (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)
    return DecodedAudio(
        samples=mono[:, None], sample_rate=RATE, channels=1, sample_width=2, mono=mono
    )


def run_analysis(
    *, min_seconds: float = 0.0, interval: float = 0.05, stages: tuple[Stage, ...] = STAGES
) -> tuple[list[Progress | AnalysisResult], float]:
    async def main() -> tuple[list[Progress | AnalysisResult], float]:
        started = anyio.current_time()
        events = [
            event
            async for event in analyse(
                Inputs(decoded_sine()),
                request=REQUEST,
                size=1234,
                pacing=Pacing(started=started, min_seconds=min_seconds, interval=interval),
                limiter=anyio.CapacityLimiter(2),
                stages=stages,
            )
        ]
        return events, anyio.current_time() - started

    return anyio.run(main)


def encode(stages: tuple[Stage, ...]) -> list[dict[str, Any]]:
    async def main() -> list[bytes]:
        events = analyse(
            Inputs(decoded_sine()),
            request=REQUEST,
            size=1,
            pacing=Pacing(started=anyio.current_time()),
            limiter=anyio.CapacityLimiter(1),
            stages=stages,
        )
        return [line async for line in ndjson_lines(events)]

    lines = anyio.run(main)
    assert all(line.endswith(b"\n") and line.count(b"\n") == 1 for line in lines)
    return [json.loads(line) for line in lines]


def test_analyse_when_no_floor_then_one_line_per_stage_then_result() -> None:
    events, _ = run_analysis()

    progress = [event for event in events if isinstance(event, Progress)]
    assert [event.stage for event in progress] == ["decoded", *(s.name for s in STAGES)]
    assert progress[-1].progress == pytest.approx(FINAL_PROGRESS)
    result = events[-1]
    assert isinstance(result, AnalysisResult)
    assert (result.job_id, result.token_id, result.key, result.bytes) == (
        "job-1",
        "tok-1",
        "audio/tok-1/job-1.flac",
        1234,
    )
    assert result.duration_ms == 1000
    assert result.pitch_hz == pytest.approx(220, rel=0.02)


def test_analyse_when_min_seconds_then_takes_that_long_with_ticks_rising_smoothly() -> None:
    events, elapsed = run_analysis(min_seconds=0.6, interval=0.03)

    assert elapsed >= 0.6
    values = [event.progress for event in events if isinstance(event, Progress)]
    assert values == sorted(values)
    assert all(0.0 <= value <= 1.0 for value in values)
    # More lines than stages: pacing ticks between them, no jump larger than one stage.
    assert len(values) > 1 + len(STAGES)
    assert max(b - a for a, b in pairwise(values)) <= 0.85 / len(STAGES) + 1e-9
    assert isinstance(events[-1], AnalysisResult)


def test_ndjson_lines_when_success_then_progress_lines_then_result_line() -> None:
    lines = encode(STAGES)

    assert all(set(line) == {"progress", "stage"} for line in lines[:-1])
    assert lines[-1]["result"]["key"] == "audio/tok-1/job-1.flac"


def test_ndjson_lines_when_stage_raises_analysis_error_then_last_line_carries_its_code() -> None:
    def broken(_inputs: Inputs, _found: dict[str, Any]) -> dict[str, Any]:
        raise UndecodableAudio("frame 12 is corrupt")

    lines = encode((STAGES[0], Stage("broken", broken)))

    assert lines[-1] == {"error": {"code": "undecodable_audio", "message": "frame 12 is corrupt"}}
    assert [line["stage"] for line in lines[:-1]] == ["decoded", "loudness"]


def test_ndjson_lines_when_stage_crashes_then_internal_error_line_not_a_broken_stream() -> None:
    def crash(_inputs: Inputs, _found: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("bug")

    lines = encode((Stage("crash", crash),))

    assert lines[-1] == {"error": {"code": "internal_error", "message": "internal error"}}


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("application/x-ndjson", True),
        ("application/json, application/x-ndjson;q=0.9", True),
        ("Application/X-NDJSON", True),
        ("application/json", False),
        ("*/*", False),
        ("", False),
    ],
)
def test_wants_ndjson_when_accept_header_then_only_explicit_ndjson(
    accept: str, expected: bool
) -> None:
    assert wants_ndjson(accept) is expected
