"""Preparation stage: probe, decode (the validation: fake or truncated audio fails here), downmix
and resample per settings, and store in AUDIO_STORE_FORMAT (`original`, `flac`, `mp3`, `ogg`).

Two decoders, chosen per file by how large its decoded PCM will be, which ffprobe tells from
the headers without decoding (duration × sample rate × channels × bytes per sample):

* **At most `stream_threshold_bytes` (PREPARE_STREAM_THRESHOLD_MB, default 64 MB ≈ 6 min of
  44.1 kHz stereo): pydub.** `AudioSegment` holds the whole clip as PCM, and decoding copies it
  more than once on the way (ffmpeg's output is read whole, then re-sliced), so the worker's
  peak memory is a small multiple of the decoded size: ≈ 3× by measurement (README,
  "Analysis"), i.e. ≈ 200 MB above the process's baseline at the default threshold.
* **Above it, or when ffprobe cannot tell the duration (browser-recorded WebM often has none):
  one ffmpeg subprocess** decodes, downmixes, resamples and encodes as a stream, writing the
  stored file directly. Python only reads a small metering output (8 kHz mono PCM, 16 KB per
  second of audio, in 64 KB reads) to count the decoded duration exactly. Memory is ffmpeg's
  own buffers, constant in the length of the file (tens of MB, measured in the README).

MAX_UPLOAD_MB caps the input of both paths; the threshold caps what pydub may expand it to.

Both paths hand channel and rate conversion to ffmpeg with the same options, so they store the
same audio: ffmpeg's resampler filters before decimating, while pydub's `set_frame_rate`
(audioop.ratecv) interpolates without an anti-aliasing filter and folds high frequencies down
into the voice band. Channels are only ever reduced and rates only lowered (`channels` and
`sample_rate` are ceilings): upsampling adds bytes, not information.

Truncation: a file cut short still decodes up to the cut, and ffmpeg exits 0. Where the
container declares its length exactly (FLAC, WAV, Ogg, MP4, WebM with a duration), decoding
much less than declared fails the job as `truncated_audio`. MP3 and ADTS AAC are skipped:
ffprobe estimates their duration from the bitrate, so a shortfall proves nothing; and a file
whose writer could not seek back to record its length (FLAC or WebM streamed to a pipe)
declares none, so a cut there passes as a shorter recording.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from services.errors import PermanentError, StageError, TransientError
from services.sniff import CONTENT_TYPES

with warnings.catch_warnings():
    # pydub imports the stdlib audioop (deprecated in 3.11–3.12).
    warnings.simplefilter("ignore", DeprecationWarning)
    from pydub import AudioSegment
    from pydub.exceptions import CouldntDecodeError, CouldntEncodeError

MB = 1024 * 1024
DEFAULT_STREAM_THRESHOLD_BYTES = 64 * MB
# The metering output of the streaming path: enough resolution for a duration exact to a
# fraction of a millisecond, little enough data that reading it costs nothing.
METER_RATE = 8000
METER_READ_BYTES = 64 * 1024
PROBE_TIMEOUT_SECONDS = 30.0
# Whole-file decodes: generous, but below the task's soft time limit (840 s by default).
DECODE_TIMEOUT_SECONDS = 600.0
# Tolerated shortfall of decoded against declared duration before calling a file truncated:
# encoder delay and padding differ between containers by tens of milliseconds, never seconds.
TRUNCATION_TOLERANCE_SECONDS = 0.5
TRUNCATION_TOLERANCE_RATIO = 0.05
# Codecs whose declared duration ffprobe only estimates from the bitrate.
_ESTIMATED_DURATION_CODECS = frozenset({"mp3", "mp2", "aac"})
_INTEGER_PCM = frozenset({"pcm_u8", "pcm_s16le", "pcm_s24le", "pcm_s32le"})
_SAMPLE_FMT_BYTES = {"u8": 1, "s16": 2, "s32": 4, "flt": 4, "dbl": 8, "s64": 8}
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
class Probe:
    """What ffprobe reads from the headers, before anything is decoded."""

    format_name: str
    codec: str
    sample_rate: int
    channels: int
    bytes_per_sample: int
    duration_seconds: float | None

    @property
    def decoded_bytes(self) -> int | None:
        """Size of the PCM a full decode produces; None when the duration is unknown."""
        if self.duration_seconds is None:
            return None
        return int(self.duration_seconds * self.sample_rate * self.channels * self.bytes_per_sample)

    @property
    def exact_duration(self) -> float | None:
        """The declared duration, when the container states it rather than ffprobe guessing."""
        return None if self.codec in _ESTIMATED_DURATION_CODECS else self.duration_seconds


def _undecodable(detail: str) -> PermanentError:
    return PermanentError(
        "undecodable_audio", f"The file could not be decoded as audio: {detail}"[:300]
    )


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no detail"


def _run_tool(args: list[str], *, timeout: float) -> subprocess.CompletedProcess[bytes]:
    """Run ffprobe/ffmpeg; a missing binary is the host's fault, so a retryable error."""
    try:
        return subprocess.run(args, capture_output=True, timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise TransientError("decoder_unavailable", f"{args[0]} is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise PermanentError(
            "decode_timeout", f"{args[0]} did not finish within {timeout:.0f} s"
        ) from exc


def _float_or_none(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def probe(path: Path) -> Probe:
    """Read the first audio stream's format from the headers (no decoding), or fail the job as
    `undecodable_audio` when ffprobe sees no audio at all (text, images, random bytes)."""
    result = _run_tool(
        [
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            "a:0",
            "-show_entries",
            "stream=codec_name,sample_rate,channels,sample_fmt,bits_per_sample,"
            "bits_per_raw_sample,duration:format=format_name,duration",
            "-of",
            "json",
            str(path),
        ],
        timeout=PROBE_TIMEOUT_SECONDS,
    )
    if result.returncode != 0:
        raise _undecodable(_first_line(result.stderr.decode(errors="replace")))
    try:
        info = json.loads(result.stdout or b"{}")
    except json.JSONDecodeError as exc:
        raise _undecodable("unreadable probe output") from exc
    streams = info.get("streams") or []
    if not streams:
        raise _undecodable("no audio stream found")
    stream, container = streams[0], info.get("format") or {}
    sample_rate = int(stream.get("sample_rate") or 0)
    channels = int(stream.get("channels") or 0)
    if sample_rate <= 0 or channels <= 0:
        raise _undecodable("the audio stream has no sample rate or channel count")
    bits = int(stream.get("bits_per_raw_sample") or 0) or int(stream.get("bits_per_sample") or 0)
    fmt_bytes = _SAMPLE_FMT_BYTES.get(str(stream.get("sample_fmt", "")).rstrip("p"), 4)
    return Probe(
        format_name=str(container.get("format_name") or ""),
        codec=str(stream.get("codec_name") or ""),
        sample_rate=sample_rate,
        channels=channels,
        bytes_per_sample=max(fmt_bytes, (bits + 7) // 8),
        duration_seconds=_float_or_none(stream.get("duration"))
        or _float_or_none(container.get("duration")),
    )


def target_format(
    source: Probe, *, store_format: str, sample_rate: int | None, channels: int | None
) -> tuple[int, int]:
    """(rate, channels) to store: the settings are ceilings, and Opus needs one of its rates."""
    rate = source.sample_rate if not sample_rate else min(source.sample_rate, sample_rate)
    if store_format == "ogg":
        rate = next((r for r in _OPUS_RATES if r >= rate), _OPUS_RATES[-1])
    count = source.channels if not channels else min(source.channels, channels)
    return rate, count


def _conversion_options(spec: StoreSpec, *, rate: int, channels: int) -> list[str]:
    """ffmpeg output options shared by both paths (the codec is named separately)."""
    return ["-ac", str(channels), "-ar", str(rate), *spec.options]


def _check_complete(source: Probe, decoded_seconds: float) -> None:
    declared = source.exact_duration
    if declared is None:
        return
    allowed = max(TRUNCATION_TOLERANCE_SECONDS, TRUNCATION_TOLERANCE_RATIO * declared)
    if declared - decoded_seconds > allowed:
        raise PermanentError(
            "truncated_audio",
            f"The file ends early: it declares {declared:.1f} s of audio but only "
            f"{decoded_seconds:.1f} s could be decoded",
        )


def _stored_format(path: Path) -> tuple[int, int]:
    """(sample rate, channels) a decoder will get from the stored file (48 kHz for Opus)."""
    stored = probe(path)
    return stored.sample_rate, stored.channels


# --- pydub: everything in memory --------------------------------------------------------------


def _decode_with_pydub(source: Path, info: Probe) -> AudioSegment:
    try:
        if info.codec in _INTEGER_PCM and info.format_name == "wav":
            # pydub's own WAV reader, no subprocess. An open handle, not a path: pydub leaves
            # a file it opened itself unclosed on this path.
            with source.open("rb") as handle:
                return AudioSegment.from_file(handle, format="wav")
        # Everything else through ffmpeg. Never `format="wav"` here: pydub would try its
        # own reader first, which takes float samples for integers and returns noise.
        if info.format_name == "wav":
            return AudioSegment.from_file(str(source), codec=info.codec)
        return AudioSegment.from_file(str(source), format=info.format_name.split(",")[0])
    except (CouldntDecodeError, IndexError, KeyError, ValueError, EOFError) as exc:
        raise _undecodable(_first_line(str(exc))) from exc


def _prepare_with_pydub(
    source: Path, info: Probe, *, store_format: str, target: Path, rate: int, channels: int
) -> tuple[int, tuple[int, int]]:
    """Returns (duration_ms, (stored rate, stored channels))."""
    segment = _decode_with_pydub(source, info)
    decoded_ms = len(segment)
    if segment.frame_count() == 0:
        raise PermanentError("empty_audio", "The file contains no audio")
    _check_complete(info, decoded_ms / 1000)
    if store_format == "original":
        shutil.copyfile(source, target)
        return decoded_ms, (segment.frame_rate, segment.channels)
    spec = _STORE[store_format]
    try:
        # An open handle: pydub's export returns the file it opened for a path, unclosed.
        with target.open("wb") as out:
            segment.export(
                out,
                format=spec.muxer,
                codec=spec.codec,
                parameters=_conversion_options(spec, rate=rate, channels=channels),
            )
    except CouldntEncodeError as exc:
        raise PermanentError(
            "encode_failed", f"Could not store the audio as {store_format}: {_first_line(str(exc))}"
        ) from exc
    return decoded_ms, _stored_format(target)


# --- ffmpeg: streamed, constant memory --------------------------------------------------------


def _count_meter(stdout: IO[bytes]) -> int:
    """Bytes of the 16-bit mono metering stream, read in small pieces."""
    total = 0
    while chunk := stdout.read(METER_READ_BYTES):
        total += len(chunk)
    return total


def _prepare_with_ffmpeg(
    source: Path,
    info: Probe,
    *,
    store_format: str,
    target: Path,
    rate: int,
    channels: int,
    timeout: float = DECODE_TIMEOUT_SECONDS,
) -> tuple[int, tuple[int, int]]:
    """One pass: the stored file (unless keeping the original) plus the metering stream."""
    args = ["ffmpeg", "-nostdin", "-hide_banner", "-v", "error", "-y", "-i", str(source)]
    if store_format != "original":
        spec = _STORE[store_format]
        args += ["-map", "0:a:0", "-c:a", spec.codec]
        args += [*_conversion_options(spec, rate=rate, channels=channels), "-f", spec.muxer]
        args.append(str(target))
    args += ["-map", "0:a:0", "-ac", "1", "-ar", str(METER_RATE), "-c:a", "pcm_s16le"]
    args += ["-f", "s16le", "pipe:1"]
    # stderr goes to a file: a pipe nobody drains would fill up and stall ffmpeg on a file
    # full of decode errors.
    with tempfile.TemporaryFile() as errors:
        try:
            process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=errors)
        except FileNotFoundError as exc:
            raise TransientError("decoder_unavailable", "ffmpeg is not installed") from exc
        # Reading the pipe is what waits for ffmpeg, so the deadline is a timer that kills it.
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            process.kill()

        watchdog = threading.Timer(timeout, expire)
        watchdog.start()
        try:
            assert process.stdout is not None
            with process.stdout:
                meter_bytes = _count_meter(process.stdout)
            returncode = process.wait()
        finally:
            watchdog.cancel()
            if process.poll() is None:
                process.kill()
                process.wait()
        errors.seek(0)
        detail = errors.read(64 * 1024).decode(errors="replace")
    if expired.is_set():
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
        raise PermanentError("decode_timeout", f"ffmpeg did not finish within {timeout:.0f} s")
    if returncode != 0:
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
        raise _undecodable(_first_line(detail))
    samples = meter_bytes // 2
    if samples == 0:
        raise PermanentError("empty_audio", "The file contains no audio")
    _check_complete(info, samples / METER_RATE)
    duration_ms = round(samples * 1000 / METER_RATE)
    if store_format == "original":
        shutil.copyfile(source, target)
        return duration_ms, (info.sample_rate, info.channels)
    return duration_ms, _stored_format(target)


def prepare(
    source: Path,
    *,
    source_format: str,
    store_format: str,
    dest: Path,
    sample_rate: int | None = None,
    channels: int | None = None,
    stream_threshold_bytes: int = DEFAULT_STREAM_THRESHOLD_BYTES,
) -> PreparedAudio:
    """Validate `source` by decoding it, then write the stored form to `dest` plus an
    extension. Raises PermanentError (`undecodable_audio`, `truncated_audio`, `empty_audio`)
    for bad audio and TransientError (`decoder_unavailable`) when ffmpeg is missing."""
    info = probe(source)
    rate, count = target_format(
        info, store_format=store_format, sample_rate=sample_rate, channels=channels
    )
    if store_format == "original":
        extension, content_type = source_format, CONTENT_TYPES[source_format]
    else:
        extension, content_type = _STORE[store_format].extension, _STORE[store_format].content_type
    target = dest.with_name(f"{dest.name}.{extension}")
    decoded = info.decoded_bytes
    method: Method = (
        "pydub" if decoded is not None and decoded <= stream_threshold_bytes else "ffmpeg"
    )
    run = _prepare_with_pydub if method == "pydub" else _prepare_with_ffmpeg
    try:
        duration_ms, (stored_rate, stored_channels) = run(
            source, info, store_format=store_format, target=target, rate=rate, channels=count
        )
    except StageError:
        with contextlib.suppress(FileNotFoundError):
            target.unlink()  # half-written output of a failed decode
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
