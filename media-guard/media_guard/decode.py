"""Bounded decoding: how much audio a file may yield is fixed before ffmpeg starts.

Three bounds, each sufficient on its own for memory:

* **what comes out** — ffmpeg converts to at most `max_channels` and `max_sample_rate` itself,
  so the PCM that reaches Python is sized by the ceilings, not by what the header claims;
* **how long** — `-t` stops reading the input at the length cap: the limit plus one second
  (to tell "longer than the limit"), or, when the container states its length, that length
  plus the truncation tolerance plus one second (to tell "longer than declared");
* **how many bytes** — the reader stops and kills ffmpeg once the output exceeds what the cap
  allows, for streams whose timestamps make `-t` useless.

Then the decoded length is judged: above the limit → `audio_too_long`; above the declared
length → `audio_longer_than_declared` (a header understating its content is how a 23 KB file
becomes 1.4 GB of PCM); well short of it → `truncated_audio`; nothing → `empty_audio`.
"""

from __future__ import annotations

import math
import mmap
import os
import re
import signal
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from media_guard.errors import (
    EMPTY,
    LONGER_THAN_DECLARED,
    TIMEOUT,
    TOO_LONG,
    TRUNCATED,
    MediaError,
)
from media_guard.probe import Probe
from media_guard.tools import (
    STDERR_TAIL_BYTES,
    ToolLimits,
    input_args,
    run_tool,
    spawn_tool,
    unreadable,
)

# Encoder delay and padding differ between containers by tens of milliseconds, never seconds.
TOLERANCE_SECONDS = 0.5
TOLERANCE_RATIO = 0.05
# Decoded past a limit by this much is enough to know the limit was passed.
OVERSHOOT_SECONDS = 1.0
READ_BYTES = 1024 * 1024
# How a child ends that used up RLIMIT_CPU: SIGXCPU at the soft limit (SIGKILL at the hard).
_OUT_OF_CPU = frozenset({-signal.SIGXCPU, -signal.SIGKILL})


@dataclass(frozen=True)
class DecodeLimits:
    """The bounds of one decode. Ceilings are applied by ffmpeg before Python sees a byte."""

    max_seconds: float = 600.0
    max_channels: int = 2
    max_sample_rate: int = 48000
    tool: ToolLimits = field(default_factory=ToolLimits)


# Output encodings: ffmpeg codec and raw muxer, bytes per sample.
ENCODINGS = {
    "s16": ("pcm_s16le", "s16le", 2),
    "s32": ("pcm_s32le", "s32le", 4),
    "f32": ("pcm_f32le", "f32le", 4),
}


@dataclass(frozen=True)
class Pcm:
    """Interleaved little-endian PCM as ffmpeg wrote it (`encoding`: s16, s32 or f32), in a
    buffer allocated once at the cap's size, whose pages become memory only as they fill."""

    data: memoryview
    sample_rate: int
    channels: int
    encoding: str = "s16"

    @property
    def sample_width(self) -> int:
        return ENCODINGS[self.encoding][2]

    @property
    def seconds(self) -> float:
        return len(self.data) / (self.sample_rate * self.channels * self.sample_width)


def tolerance(declared: float) -> float:
    return max(TOLERANCE_SECONDS, TOLERANCE_RATIO * declared)


def refuse_declared_length(info: Probe, max_seconds: float) -> None:
    """Refuse at once a container that states a length above the limit: nothing to decode."""
    declared = info.exact_duration
    if declared is not None and declared > max_seconds:
        raise MediaError(
            TOO_LONG, f"The audio lasts {declared:.0f} s; the limit is {max_seconds:g} s"
        )


def length_cap_seconds(info: Probe, max_seconds: float) -> float:
    """How far a decode may read: just enough past each limit to prove it was passed."""
    cap = max_seconds + OVERSHOOT_SECONDS
    declared = info.exact_duration
    if declared is not None:
        cap = min(cap, declared + tolerance(declared) + OVERSHOOT_SECONDS)
    return cap


def check_not_longer(info: Probe, seconds: float, max_seconds: float) -> None:
    """Refuse audio longer than the limit, or longer than its header declares."""
    if seconds > max_seconds:
        raise MediaError(TOO_LONG, f"The audio lasts longer than the limit of {max_seconds:g} s")
    declared = info.exact_duration
    if declared is not None and seconds > declared + tolerance(declared):
        raise MediaError(
            LONGER_THAN_DECLARED,
            f"The file declares {declared:.1f} s of audio but holds more; it is refused",
        )


def check_length(info: Probe, decoded_seconds: float, max_seconds: float) -> None:
    """Judge what a decode yielded against the limit and against the header's claim."""
    check_not_longer(info, decoded_seconds, max_seconds)
    declared = info.exact_duration
    if decoded_seconds <= 0:
        raise MediaError(EMPTY, "The file contains no audio")
    if declared is not None and declared - decoded_seconds > tolerance(declared):
        raise MediaError(
            TRUNCATED,
            f"The file ends early: it declares {declared:.1f} s of audio but only "
            f"{decoded_seconds:.1f} s could be decoded",
        )


def output_format(info: Probe, limits: DecodeLimits) -> tuple[int, int]:
    """(rate, channels) of the decode: the source's, lowered to the ceilings."""
    return min(info.sample_rate, limits.max_sample_rate), min(info.channels, limits.max_channels)


@dataclass(frozen=True)
class Pumped:
    data: memoryview
    total: int
    overflowed: bool


def _read_into(stdout: IO[bytes], buffer: memoryview) -> int:
    """Fill `buffer` from `stdout` until it is full or ffmpeg closes its output."""
    filled = 0
    while filled < len(buffer):
        count = stdout.readinto(buffer[filled : filled + READ_BYTES])  # type: ignore[attr-defined]
        if not count:
            break
        filled += count
    return filled


def pump(
    args: list[str],
    path: Path,
    *,
    tool: ToolLimits,
    max_bytes: int,
    keep: bool,
) -> Pumped:
    """Run an ffmpeg whose stdout is raw PCM and read it to the end, keeping it or only
    counting it; stop (and kill ffmpeg) past `max_bytes` or past the timeout. A non-zero exit
    that was not ours to cause is `undecodable_audio`.

    Kept output goes into one anonymous mapping of `max_bytes`: no reallocation doubles it
    while it grows, and the pages never written cost nothing."""
    buffer = memoryview(mmap.mmap(-1, max_bytes)) if keep and max_bytes else memoryview(b"")
    total = 0
    overflowed = False
    # stderr to a file: a pipe nobody drains would fill up and stall ffmpeg.
    with tempfile.TemporaryFile() as errors:
        process = spawn_tool(args, limits=tool, stdout=subprocess.PIPE, stderr=errors)
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            process.kill()

        watchdog = threading.Timer(tool.timeout_seconds, expire)
        watchdog.start()
        try:
            stdout: IO[bytes] | None = process.stdout
            assert stdout is not None
            with stdout:
                if keep:
                    total = _read_into(stdout, buffer)
                    overflowed = total == max_bytes and bool(stdout.read(1))
                else:
                    while chunk := stdout.read(READ_BYTES):
                        total += len(chunk)
                        if total > max_bytes:
                            overflowed = True
                            break
                if overflowed:
                    process.kill()
            returncode = process.wait()
        finally:
            watchdog.cancel()
            if process.poll() is None:
                process.kill()
                process.wait()
        errors.seek(max(0, errors.seek(0, os.SEEK_END) - STDERR_TAIL_BYTES))
        detail = errors.read()
    if expired.is_set() or (returncode in _OUT_OF_CPU and not overflowed):
        raise MediaError(TIMEOUT, f"Decoding did not finish within {tool.timeout_seconds:.0f} s")
    if returncode != 0 and not overflowed:
        raise unreadable(detail, path, doing="decoded")
    return Pumped(data=buffer[:total], total=total, overflowed=overflowed)


def max_output_bytes(seconds: float, *, rate: int, channels: int, width: int) -> int:
    """The PCM `seconds` of audio may fill, plus a frame's slack for resampler rounding."""
    return (math.ceil(seconds * rate) + 4096) * channels * width


def packet_span_seconds(path: Path, info: Probe, *, up_to: float, tool: ToolLimits) -> float:
    """The time the audio stream's packets cover, up to `up_to`, read without decoding (the
    stream copied to ffmpeg's null muxer, which takes milliseconds for any length)."""
    args = ["ffmpeg", "-nostdin", "-hide_banner", "-v", "error", "-nostats"]
    args += input_args(info.rule, path)
    args += ["-map", "0:a:0", "-c", "copy", "-t", f"{up_to:.3f}", "-f", "null", "-"]
    args += ["-progress", "pipe:1"]
    result = run_tool(args, limits=tool)
    if result.returncode != 0:
        raise unreadable(result.stderr, path)
    times = re.findall(rb"^out_time_us=(\d+)$", result.stdout, flags=re.MULTILINE)
    return int(times[-1]) / 1e6 if times else 0.0


def refuse_discarded_excess(path: Path, info: Probe, limits: DecodeLimits) -> None:
    """Where packets can be marked as discarded, a decoder can spend minutes of CPU on audio
    that never comes out, and no output cap would notice: so the time the packets cover is
    judged first, before any decode, against the limit and the declared length."""
    if not info.rule.discards:
        return
    cap = length_cap_seconds(info, limits.max_seconds)
    span = packet_span_seconds(path, info, up_to=cap, tool=limits.tool)
    check_not_longer(info, span, limits.max_seconds)


def decode_pcm(path: Path, info: Probe, limits: DecodeLimits, *, encoding: str = "s16") -> Pcm:
    """Decode `path` (probed as `info`) into memory within `limits`; raises MediaError."""
    refuse_declared_length(info, limits.max_seconds)
    refuse_discarded_excess(path, info, limits)
    rate, channels = output_format(info, limits)
    cap = length_cap_seconds(info, limits.max_seconds)
    codec, muxer, width = ENCODINGS[encoding]
    args = ["ffmpeg", "-nostdin", "-hide_banner", "-v", "error"]
    args += input_args(info.rule, path, max_seconds=cap)
    args += ["-map", "0:a:0", "-ac", str(channels), "-ar", str(rate)]
    args += ["-c:a", codec, "-f", muxer, "pipe:1"]
    pumped = pump(
        args,
        path,
        tool=limits.tool,
        max_bytes=max_output_bytes(cap, rate=rate, channels=channels, width=width),
        keep=True,
    )
    frame = channels * width
    if pumped.overflowed:
        check_length(info, (pumped.total + 1) / (frame * rate), limits.max_seconds)
    pcm = Pcm(pumped.data[: pumped.total - pumped.total % frame], rate, channels, encoding)
    check_length(info, pcm.seconds, limits.max_seconds)
    return pcm
