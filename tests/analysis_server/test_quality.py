"""The plain-language warnings, from numbers alone."""

from __future__ import annotations

from typing import Any

import pytest

from analysis_server import quality

GOOD: dict[str, Any] = {
    "duration_ms": 4000,
    "loudness_lufs": -20.0,
    "loudness_dbfs": -22.0,
    "clipping_ratio": 0.0,
    "silence_ratio": 0.2,
}


def codes(**changes: Any) -> list[str]:
    return [issue.code for issue in quality.assess(**{**GOOD, **changes})]


def test_assess_when_a_normal_take_then_no_warnings() -> None:
    assert codes() == []


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"loudness_lufs": -42.0}, ["too_quiet"]),
        ({"loudness_lufs": None, "loudness_dbfs": -45.0}, ["too_quiet"]),
        ({"loudness_lufs": None, "loudness_dbfs": -30.0}, []),
        ({"clipping_ratio": 0.02}, ["clipped"]),
        ({"clipping_ratio": 0.0005}, []),
        ({"silence_ratio": 0.75}, ["mostly_silence"]),
        ({"duration_ms": 600}, ["too_short"]),
    ],
    ids=[
        "quiet-lufs",
        "quiet-dbfs-when-too-short-for-lufs",
        "dbfs-fine",
        "clipped",
        "a-few-clipped-samples-tolerated",
        "mostly-silence",
        "too-short",
    ],
)
def test_assess_when_one_problem_then_exactly_its_warning(
    changes: dict[str, Any], expected: list[str]
) -> None:
    assert codes(**changes) == expected


def test_assess_when_digital_silence_then_too_quiet_and_mostly_silence() -> None:
    issues = quality.assess(
        duration_ms=3000,
        loudness_lufs=None,
        loudness_dbfs=None,
        clipping_ratio=0.0,
        silence_ratio=1.0,
    )

    assert [issue.code for issue in issues] == ["too_quiet", "mostly_silence"]
    assert "no sound at all" in issues[0].message


def test_assess_when_warning_then_message_gives_the_measure_and_what_to_do() -> None:
    (issue,) = quality.assess(**{**GOOD, "clipping_ratio": 0.023})

    assert "2.3%" in issue.message
    assert "input level" in issue.message
