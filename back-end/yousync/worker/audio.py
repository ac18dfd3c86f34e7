"""Preparation stage: sniff, probe, decode (the validation: fake, truncated or lying audio fails
here), downmix and resample per settings, and store in AUDIO_STORE_FORMAT (`original`, `flac`,
`mp3`, `ogg`).

Every upload is hostile media. `media_guard` opens it: the format sniffed from its bytes (the
worker looks again behind an ID3 tag the API could not see past) is forced on ffprobe and
ffmpeg, `file` is the only protocol, ffprobe's answer must name an allowed container and codec,
and every ffmpeg child runs under an address-space limit. A container that states a length above
MAX_AUDIO_DURATION_SECONDS is refused before any decode; otherwise decoding stops just past the
limit, or just past the declared length, and a file that holds more than it declares is refused
(`audio_longer_than_declared`). All of it happens before anything goes to S3.

Two decoders, chosen by the most PCM the decode *can* produce — the length cap (the limit, or
the declared length when the container states one) × the output ceilings (PREPARE_SAMPLE_RATE,
PREPARE_CHANNELS) × 2 bytes — a bound that is enforced, not a header's claim:

* **At most `stream_threshold_bytes` (PREPARE_STREAM_THRESHOLD_MB, default 64 MB): pydub.**
  ffmpeg decodes straight to the output rate and channels; the PCM becomes an `AudioSegment`,
  which pydub exports to the stored format. Peak memory ≈ 2-3× the PCM.
* **Above it: one ffmpeg subprocess** decodes, converts and encodes as a stream, writing the
  stored file directly. Python only reads a small metering output (8 kHz mono PCM, 16 KB per
  second of audio) to count the decoded duration exactly. Memory is ffmpeg's own buffers.

Channels are only ever reduced and rates only lowered (the settings are ceilings; 0 keeps the
source's, up to 2 channels and 48 kHz): upsampling adds bytes, not information. Both paths hand
the conversion to ffmpeg, whose resampler filters before decimating (pydub's `set_frame_rate`
does not, and folds high frequencies into the voice band).

Truncation: where the container states its length exactly (FLAC, WAV, Ogg, MP4, WebM with a
duration), decoding much less than declared fails the job as `truncated_audio`. MP3 and ADTS AAC
only have ffprobe's estimate from the bitrate, so they are judged against the limit alone.
"""

from __future__ import annotations

import contextlib
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from media_guard import (
    CONTENT_TYPES,
    DecodeLimits,
    MediaError,
    Probe,
    ToolLimits,
    length_cap_seconds,
    rule_for,
)
from media_guard import probe as guarded_probe
from media_guard.decode import (
    check_length,
    decode_pcm,
    max_output_bytes,
    output_format,
    pump,
    refuse_declared_length,
    refuse_discarded_excess,
)
from media_guard.probe import probe_file, probe_limits
from media_guard.tools import input_args
from yousync.core.errors import PermanentError, StageError, TransientError

with warnings.catch_warnings():
    # pydub imports the stdlib audioop (deprecated in 3.11–3.12).
    warnings.simplefilter("ignore", DeprecationWarning)
    from pydub import AudioSegment
    from pydub.exceptions import CouldntEncodeError

MB = 1024 * 1024
DEFAULT_STREAM_THRESHOLD_BYTES = 64 * MB
# What PREPARE_CHANNELS / PREPARE_SAMPLE_RATE = 0 ("keep the source's") still allows.
HARD_MAX_CHANNELS = 2
HARD_MAX_SAMPLE_RATE = 48000
# The metering output of the streaming path: enough resolution for a duration exact to a
# fraction of a millisecond, little enough data that reading it costs nothing.
METER_RATE = 8000
# Whole-file decodes (also their CPU-time limit): 601 s of any accepted codec decodes and
# encodes in a few seconds here; twenty times that is for a loaded host, not for a file.
DECODE_TIMEOUT_SECONDS = 120.0
# libopus encodes at these rates only; decoders always return 48 kHz.
_OPUS_RATES = (8000, 12000, 16000, 24000, 48000)

Method = Literal["pydub", "ffmpeg"]


@dataclass(frozen=True)
class StoreSpec:
    """How AUDIO_STORE_FORMAT is written: extension, content type, ffmpeg output options."""

    extension: str
    content_type: str
    muxer: str
    codec: str
    options: tuple[str, ...] = ()


_STORE: dict[str, StoreSpec] = {
    # 16-bit: a 24-bit take is 50 % larger as FLAC and no better for speech.
    "flac": StoreSpec("flac", "audio/flac", "flac", "flac", ("-sample_fmt", "s16")),
    "mp3": StoreSpec("mp3", "audio/mpeg", "mp3", "libmp3lame", ("-b:a", "128k")),
    "ogg": StoreSpec("ogg", "audio/ogg", "ogg", "libopus", ("-b:a", "64k")),
}


@dataclass(frozen=True)
class PreparedAudio:
    path: Path
    extension: str
    content_type: str
    size: int
    duration_ms: int
    sample_rate: int
    channels: int
    # Which decoder ran: "pydub" (in memory) or "ffmpeg" (streamed subprocess).
    method: Method = "pydub"


@dataclass(frozen=True)
class Bounds:
    """The worker's limits on one preparation (from settings; defaults for tests and tools)."""

    max_seconds: float = 600.0
    sample_rate: int | None = 48000
    channels: int | None = 1
    address_space_bytes: int = 1024 * MB
    timeout_seconds: float = DECODE_TIMEOUT_SECONDS

    def decode_limits(self) -> DecodeLimits:
        return DecodeLimits(
            max_seconds=self.max_seconds,
            max_channels=min(self.channels or HARD_MAX_CHANNELS, HARD_MAX_CHANNELS),
            max_sample_rate=min(self.sample_rate or HARD_MAX_SAMPLE_RATE, HARD_MAX_SAMPLE_RATE),
            tool=ToolLimits(
                timeout_seconds=self.timeout_seconds,
                address_space_bytes=self.address_space_bytes,
            ),
        )


def stage_error(error: MediaError) -> StageError:
    """The pipeline's view of a refusal: only a missing decoder is worth a retry."""
    kind = TransientError if error.retryable else PermanentError
    return kind(error.code, error.message)


def probe(path: Path, source_format: str | None = None, *, tool: ToolLimits | None = None) -> Probe:
    """Sniff `path` again (the API saw only its first bytes), check it is `source_format`, and
    probe it under that format's rule."""
    return probe_file(path, limits=probe_limits(tool or ToolLimits()), expected=source_format)


def decoded_bound_bytes(info: Probe, limits: DecodeLimits) -> int:
    """The most 16-bit PCM a decode of `info` under `limits` can yield: what pydub would hold."""
    rate, channels = output_format(info, limits)
    seconds = length_cap_seconds(info, limits.max_seconds)
    return max_output_bytes(seconds, rate=rate, channels=channels, width=2)


def store_format_for(source: Probe, *, store_format: str, limits: DecodeLimits) -> tuple[int, int]:
    """(rate, channels) to store: the ceilings, and Opus needs one of its rates."""
    rate, channels = output_format(source, limits)
    if store_format == "ogg":
        rate = next((r for r in _OPUS_RATES if r >= rate), _OPUS_RATES[-1])
    return rate, channels


def _stored_format(path: Path, store_format: str) -> tuple[int, int]:
    """(sample rate, channels) a decoder will get from the stored file (48 kHz for Opus)."""
    rule = rule_for(store_format)  # the store formats are upload formats too
    assert rule is not None
    stored = guarded_probe(path, rule, limits=probe_limits(ToolLimits()))
    return stored.sample_rate, stored.channels


# --- pydub: everything in memory --------------------------------------------------------------


def _prepare_with_pydub(
    source: Path, info: Probe, *, store_format: str, target: Path, limits: DecodeLimits
) -> tuple[int, tuple[int, int]]:
    """Returns (duration_ms, (stored rate, stored channels))."""
    pcm = decode_pcm(source, info, limits)
    duration_ms = round(pcm.seconds * 1000)
    if store_format == "original":
        shutil.copyfile(source, target)
        return duration_ms, (info.sample_rate, info.channels)
    segment = AudioSegment(
        data=pcm.data, sample_width=2, frame_rate=pcm.sample_rate, channels=pcm.channels
    )
    del pcm
    spec = _STORE[store_format]
    rate, channels = store_format_for(info, store_format=store_format, limits=limits)
    try:
        # An open handle: pydub's export returns the file it opened for a path, unclosed.
        with target.open("wb") as out:
            segment.export(
                out,
                format=spec.muxer,
                codec=spec.codec,
                parameters=["-ac", str(channels), "-ar", str(rate), *spec.options],
            )
    except CouldntEncodeError as exc:
        raise PermanentError(
            "encode_failed", f"Could not store the audio as {store_format}"
        ) from exc
    return duration_ms, _stored_format(target, store_format)


# --- ffmpeg: streamed, constant memory --------------------------------------------------------


def _prepare_with_ffmpeg(
    source: Path, info: Probe, *, store_format: str, target: Path, limits: DecodeLimits
) -> tuple[int, tuple[int, int]]:
    """One pass: the stored file (unless keeping the original) plus the metering stream."""
    refuse_discarded_excess(source, info, limits)
    cap = length_cap_seconds(info, limits.max_seconds)
    args = ["ffmpeg", "-nostdin", "-hide_banner", "-v", "error", "-y"]
    args += input_args(info.rule, source, max_seconds=cap)
    if store_format != "original":
        spec = _STORE[store_format]
        rate, channels = store_format_for(info, store_format=store_format, limits=limits)
        args += ["-map", "0:a:0", "-c:a", spec.codec, "-ac", str(channels), "-ar", str(rate)]
        args += [*spec.options, "-f", spec.muxer, str(target)]
    args += ["-map", "0:a:0", "-ac", "1", "-ar", str(METER_RATE), "-c:a", "pcm_s16le"]
    args += ["-f", "s16le", "pipe:1"]
    pumped = pump(
        args,
        source,
        tool=limits.tool,
        max_bytes=max_output_bytes(cap, rate=METER_RATE, channels=1, width=2),
        keep=False,
    )
    decoded_seconds = pumped.total / 2 / METER_RATE
    check_length(info, decoded_seconds, limits.max_seconds)
    duration_ms = round(decoded_seconds * 1000)
    if store_format == "original":
        shutil.copyfile(source, target)
        return duration_ms, (info.sample_rate, info.channels)
    return duration_ms, _stored_format(target, store_format)


def prepare(
    source: Path,
    *,
    source_format: str,
    store_format: str,
    dest: Path,
    bounds: Bounds | None = None,
    stream_threshold_bytes: int = DEFAULT_STREAM_THRESHOLD_BYTES,
) -> PreparedAudio:
    """Validate `source` by decoding it within `bounds`, then write the stored form to `dest`
    plus an extension. Raises PermanentError for bad or hostile audio (the codes of
    `media_guard.errors`) and TransientError (`decoder_unavailable`) when ffmpeg is missing."""
    limits = (bounds or Bounds()).decode_limits()
    if store_format == "original":
        extension, content_type = source_format, CONTENT_TYPES[source_format]
    else:
        extension, content_type = _STORE[store_format].extension, _STORE[store_format].content_type
    target = dest.with_name(f"{dest.name}.{extension}")
    method: Method = "ffmpeg"
    try:
        info = probe(source, source_format, tool=limits.tool)
        refuse_declared_length(info, limits.max_seconds)
        if decoded_bound_bytes(info, limits) <= stream_threshold_bytes:
            method = "pydub"
        run = _prepare_with_pydub if method == "pydub" else _prepare_with_ffmpeg
        duration_ms, (stored_rate, stored_channels) = run(
            source, info, store_format=store_format, target=target, limits=limits
        )
    except (MediaError, StageError) as exc:
        with contextlib.suppress(FileNotFoundError):
            target.unlink()  # half-written output of a failed decode
        if isinstance(exc, MediaError):
            raise stage_error(exc) from exc
        raise
    return PreparedAudio(
        path=target,
        extension=extension,
        content_type=content_type,
        size=target.stat().st_size,
        duration_ms=duration_ms,
        sample_rate=stored_rate,
        channels=stored_channels,
        method=method,
    )
