"""Decoding a downloaded object into samples, with pydub (ffmpeg for everything but plain WAV).

Blocking by nature (file reads, an ffmpeg subprocess, numpy): call it from a worker thread.
Any failure to decode the bytes is the audio's fault and becomes UndecodableAudio (422), with
one exception: a missing ffmpeg/ffprobe is the host's fault and becomes DecoderUnavailable (503).
"""

from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from analysis_server.errors import (
    AudioTooLong,
    DecoderUnavailable,
    EmptyAudio,
    UndecodableAudio,
)
from analysis_server.features import FloatArray, duration_ms, pcm_to_float, to_mono

with warnings.catch_warnings():
    # pydub imports the stdlib audioop (deprecated in 3.11) and warns when ffmpeg is not on
    # PATH at import time; we check for ffmpeg ourselves, per decode, with a precise error.
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", RuntimeWarning)
    from pydub import AudioSegment
    from pydub.utils import mediainfo_json

_WAV_MAGIC = (b"RIFF", b"RF64")
_WAVE_FORMAT_PCM = 0x0001
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE


@dataclass(frozen=True)
class DecodedAudio:
    samples: FloatArray  # (frames, channels), float32, full scale = 1.0
    sample_rate: int
    channels: int
    # Bytes per sample of the decoded PCM (pydub widens 24-bit to 4), not of the source codec.
    sample_width: int
    mono: FloatArray = field(repr=False)

    @property
    def frame_count(self) -> int:
        return int(self.samples.shape[0])

    @property
    def duration_ms(self) -> int:
        return duration_ms(self.frame_count, self.sample_rate)


def _is_integer_pcm_wav(path: Path) -> bool:
    """True for a RIFF/WAVE file whose samples are integer PCM.

    Only those may take pydub's built-in WAV reader: it also accepts WAVE_FORMAT_EXTENSIBLE
    files carrying float samples and silently reads the float bits as integers (garbage
    levels, plausible pitch), so float WAVs must go through ffmpeg like any other format.
    """
    with path.open("rb") as handle:
        header = handle.read(12)
        if header[:4] not in _WAV_MAGIC or header[8:12] != b"WAVE":
            return False
        # Walk the chunks to "fmt "; real files put it first, but nothing guarantees that.
        for _ in range(64):
            chunk = handle.read(8)
            if len(chunk) < 8:
                return False
            chunk_id, size = chunk[:4], int.from_bytes(chunk[4:], "little")
            if chunk_id != b"fmt ":
                handle.seek(size + (size & 1), 1)
                continue
            fmt = handle.read(min(size, 40))
            if len(fmt) < 16:
                return False
            tag = int.from_bytes(fmt[:2], "little")
            if tag == _WAVE_FORMAT_EXTENSIBLE and len(fmt) >= 26:
                tag = int.from_bytes(fmt[24:26], "little")  # first bytes of SubFormat GUID
            return tag == _WAVE_FORMAT_PCM
    return False


def _require_decoder() -> None:
    missing = [tool for tool in ("ffmpeg", "ffprobe") if shutil.which(tool) is None]
    if missing:
        raise DecoderUnavailable(f"{' and '.join(missing)} not installed on the analysis server")


def _load_segment(path: Path, *, max_duration_seconds: float) -> AudioSegment:
    # Integer PCM WAV goes through pydub's own reader (no subprocess; its size is already
    # bounded by the byte limit). We open the file ourselves: pydub leaves files it opened
    # unclosed on several paths, which leaks a descriptor per request until GC.
    if _is_integer_pcm_wav(path):
        with path.open("rb") as handle:
            return AudioSegment.from_file(handle, format="wav")
    _require_decoder()
    # pydub indexes the probe's first audio stream without checking there is one (and then
    # leaks the file it opened); probing first turns "no audio in this file" into a clean error.
    info = mediainfo_json(str(path))
    streams = info.get("streams", []) if isinstance(info, dict) else []
    if not any(stream.get("codec_type") == "audio" for stream in streams):
        raise UndecodableAudio("no audio stream found (not a media file, or video only)")
    # ffmpeg is told to stop one second past the limit: a small compressed file can expand
    # to hours of PCM, and decoding that far only to refuse it would risk the process's memory.
    return AudioSegment.from_file(str(path), duration=max_duration_seconds + 1)


def decode_file(path: Path, *, max_duration_seconds: float) -> DecodedAudio:
    """Decode the file at `path`; raises UndecodableAudio, AudioTooLong, EmptyAudio or
    DecoderUnavailable."""
    try:
        segment = _load_segment(path, max_duration_seconds=max_duration_seconds)
    except (DecoderUnavailable, UndecodableAudio, MemoryError):
        raise
    except FileNotFoundError as exc:
        # What subprocess raises when ffmpeg vanished between the check and the call.
        raise DecoderUnavailable(f"decoder not runnable: {exc}") from exc
    except Exception as exc:
        # pydub raises CouldntDecodeError for ffmpeg failures, but also IndexError/KeyError/
        # ValueError/wave.Error/EOFError on odd probes and headers: all "not audio we can read".
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UndecodableAudio(
            f"could not decode audio ({type(exc).__name__}{': ' if first_line else ''}"
            f"{first_line[:200]})"
        ) from exc

    frame_count = int(segment.frame_count())
    seconds = frame_count / segment.frame_rate if segment.frame_rate else 0.0
    if seconds > max_duration_seconds:
        raise AudioTooLong(f"audio lasts longer than the limit of {max_duration_seconds:g} s")
    if frame_count == 0:
        raise EmptyAudio("the audio decodes to no samples")

    samples = pcm_to_float(
        segment.raw_data, sample_width=segment.sample_width, channels=segment.channels
    )
    return DecodedAudio(
        samples=samples,
        sample_rate=int(segment.frame_rate),
        channels=int(segment.channels),
        sample_width=int(segment.sample_width),
        mono=to_mono(samples),
    )
