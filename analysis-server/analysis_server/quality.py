"""Plain-language warnings about a recording, from measurements already taken.

Pure: it only reads numbers, so the thresholds are tested without audio. The thresholds are
for spoken lines recorded for dubbing; each names what a person can do about it, since the
warnings are shown to whoever recorded the take.
"""

from __future__ import annotations

from dataclasses import dataclass

# Broadcast dialogue sits around -23…-16 LUFS and a laptop microphone at arm's length around
# -30; below -35 the voice is near the noise of a typical room and hard to analyse.
TOO_QUIET_LUFS = -35.0
# Fallback when loudness cannot be integrated (clip shorter than one 400 ms block).
TOO_QUIET_DBFS = -40.0
# A clean recording has no samples at full scale; a few in a thousand is audible distortion.
CLIPPED_RATIO = 0.001
MOSTLY_SILENCE_RATIO = 0.6
TOO_SHORT_MS = 1000


@dataclass(frozen=True)
class Issue:
    code: str
    message: str


def assess(
    *,
    duration_ms: int,
    loudness_lufs: float | None,
    loudness_dbfs: float | None,
    clipping_ratio: float,
    silence_ratio: float,
) -> list[Issue]:
    """The warnings that apply, most actionable first; empty when the recording is fine."""
    warnings: list[Issue] = []
    level, unit, limit = (
        (loudness_lufs, "LUFS", TOO_QUIET_LUFS)
        if loudness_lufs is not None
        else (loudness_dbfs, "dBFS", TOO_QUIET_DBFS)
    )
    if level is None or level < limit:
        measured = "no sound at all" if level is None else f"{level:.0f} {unit}"
        warnings.append(
            Issue(
                "too_quiet",
                f"The recording is too quiet ({measured}). Move closer to the microphone or "
                "raise its input level.",
            )
        )
    if clipping_ratio > CLIPPED_RATIO:
        warnings.append(
            Issue(
                "clipped",
                f"The recording is distorted: {clipping_ratio:.1%} of it hits the maximum level. "
                "Lower the microphone's input level or move back a little.",
            )
        )
    if silence_ratio > MOSTLY_SILENCE_RATIO:
        warnings.append(
            Issue(
                "mostly_silence",
                f"Most of the recording is silence ({silence_ratio:.0%}). Start speaking soon "
                "after starting the recording and stop it when you finish.",
            )
        )
    if duration_ms < TOO_SHORT_MS:
        warnings.append(
            Issue(
                "too_short",
                f"The recording is very short ({duration_ms / 1000:.1f} s). "
                "Record the whole line, with a moment of silence before and after.",
            )
        )
    return warnings
