"""ffprobe under the format rule: what the headers claim, checked against the allow-list.

The answer is a claim, not a fact: a header can understate the length or the channel count.
`decode` uses it to refuse early (a declared length above the limit) and to size its caps,
never to decide how much memory a decode may take.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from media_guard.errors import UNDECODABLE, UNSUPPORTED, MediaError
from media_guard.formats import FormatRule, rule_for, sniff_file
from media_guard.tools import ToolLimits, input_args, run_tool, unreadable

_SAMPLE_FMT_BYTES = {"u8": 1, "s16": 2, "s32": 4, "flt": 4, "dbl": 8, "s64": 8}
PROBE_TIMEOUT_SECONDS = 30.0
PROBE_LIMITS = ToolLimits(timeout_seconds=PROBE_TIMEOUT_SECONDS)


def probe_limits(tool: ToolLimits) -> ToolLimits:
    """A decode's limits made a probe's: the same address space, a shorter clock."""
    return ToolLimits(
        timeout_seconds=min(tool.timeout_seconds, PROBE_TIMEOUT_SECONDS),
        address_space_bytes=tool.address_space_bytes,
    )


@dataclass(frozen=True)
class Probe:
    """What ffprobe reads from the headers of the first audio stream, before decoding."""

    format_name: str
    codec: str
    sample_rate: int
    channels: int
    bytes_per_sample: int
    duration_seconds: float | None
    rule: FormatRule

    @property
    def exact_duration(self) -> float | None:
        """The declared duration when the container states it, not when ffprobe estimates it
        from the bitrate (MP3, ADTS AAC)."""
        return self.duration_seconds if self.rule.exact_duration else None


def probe_file(
    path: Path, *, limits: ToolLimits = PROBE_LIMITS, expected: str | None = None
) -> Probe:
    """Sniff `path` on disk, then probe it under that format's rule. With `expected` (what
    the API sniffed from the upload's first bytes) the two must agree; behind an ID3 tag
    larger than the API's window its provisional "mp3" may turn out to be ADTS AAC."""
    sniffed = sniff_file(path)
    rule = rule_for(sniffed) if sniffed else None
    agrees = expected in (None, sniffed) or (expected, sniffed) == ("mp3", "aac")
    if rule is None or not agrees:
        raise MediaError(UNSUPPORTED, "The file is not audio in a format we accept")
    return probe(path, rule, limits=limits)


def _positive(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def probe(path: Path, rule: FormatRule, *, limits: ToolLimits = PROBE_LIMITS) -> Probe:
    """Probe `path` as `rule` says; refuse anything outside the rule's allow-lists as
    `unsupported_audio_format` and what ffprobe cannot read as `undecodable_audio`."""
    args = ["ffprobe", "-v", "error", *input_args(rule, path)]
    args += ["-select_streams", "a:0", "-of", "json", "-show_entries"]
    args.append(
        "stream=codec_name,sample_rate,channels,sample_fmt,bits_per_sample,"
        "bits_per_raw_sample,duration:format=format_name,duration"
    )
    result = run_tool(args, limits=limits)
    if result.returncode != 0:
        if b"not on whitelist" in result.stderr:
            # A stream of another codec (a video track, say): ffmpeg refused to open its decoder.
            raise MediaError(UNSUPPORTED, "The file holds a stream of a codec not accepted here")
        raise unreadable(result.stderr, path)
    try:
        info = json.loads(result.stdout or b"{}")
    except json.JSONDecodeError as exc:
        raise MediaError(UNDECODABLE, "The file could not be read as audio") from exc
    container = info.get("format") or {}
    format_name = str(container.get("format_name") or "")
    if format_name not in rule.format_names:
        raise MediaError(UNSUPPORTED, f"Container {format_name or 'unknown'} is not accepted")
    streams = info.get("streams") or []
    if not streams:
        raise MediaError(UNDECODABLE, "The file holds no audio stream")
    stream = streams[0]
    codec = str(stream.get("codec_name") or "")
    if codec not in rule.codecs:
        raise MediaError(UNSUPPORTED, f"Codec {codec or 'unknown'} is not accepted here")
    sample_rate = int(stream.get("sample_rate") or 0)
    channels = int(stream.get("channels") or 0)
    if sample_rate <= 0 or channels <= 0:
        raise MediaError(UNDECODABLE, "The audio stream has no sample rate or channel count")
    bits = int(stream.get("bits_per_raw_sample") or 0) or int(stream.get("bits_per_sample") or 0)
    fmt_bytes = _SAMPLE_FMT_BYTES.get(str(stream.get("sample_fmt", "")).rstrip("p"), 4)
    return Probe(
        format_name=format_name,
        codec=codec,
        sample_rate=sample_rate,
        channels=channels,
        bytes_per_sample=max(fmt_bytes, (bits + 7) // 8),
        duration_seconds=_positive(stream.get("duration")) or _positive(container.get("duration")),
        rule=rule,
    )
