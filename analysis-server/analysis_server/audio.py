"""Decoding a downloaded object into samples, under the same rules as the worker's preparation.

The object may be anything a caller managed to store, so `media_guard` opens it: the format is
sniffed from its bytes and forced on ffprobe and ffmpeg (`file` is the only protocol), ffprobe's
answer must name an allowed container and codec, the decode is converted by ffmpeg itself to at
most `max_channels` and `max_sample_rate`, stopped just past the duration limit (or the declared
length), and run under an address-space limit. A reference 23 KB long that unfolds into
8 channels × 10 minutes therefore costs at most 2 channels, and one that lies about its length
is refused as soon as the lie shows.

Blocking by nature (an ffmpeg subprocess, numpy): call it from a worker thread. Any failure to
decode is the audio's fault (422), except a missing ffmpeg/ffprobe, the host's (503).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from analysis_server.errors import (
    AnalysisError,
    AudioTooLong,
    DecoderUnavailable,
    EmptyAudio,
    UndecodableAudio,
    UnsupportedAudioFormat,
)
from analysis_server.features import FloatArray, duration_ms, to_mono
from media_guard import (
    DecodeLimits,
    MediaError,
    decode_pcm,
)
from media_guard import errors as media
from media_guard.probe import probe_file, probe_limits

_LOSSLESS = frozenset({"flac", "alac"})
_ERRORS: dict[str, type[AnalysisError]] = {
    media.UNSUPPORTED: UnsupportedAudioFormat,
    media.TOO_LONG: AudioTooLong,
    media.EMPTY: EmptyAudio,
    media.DECODER_UNAVAILABLE: DecoderUnavailable,
}


@dataclass(frozen=True)
class DecodedAudio:
    samples: FloatArray  # (frames, channels), float32, full scale = 1.0
    sample_rate: int
    channels: int
    # Bytes per sample of the decoded PCM (24-bit sources widened to 4), not of the source's.
    sample_width: int
    mono: FloatArray = field(repr=False)
    # The source's own channel count (the decode keeps at most the bounds' ceiling).
    source_channels: int = 0

    @property
    def frame_count(self) -> int:
        return int(self.samples.shape[0])

    @property
    def duration_ms(self) -> int:
        return duration_ms(self.frame_count, self.sample_rate)


def _analysis_error(error: MediaError) -> AnalysisError:
    # Truncated, longer than declared, timed out: all "not audio we can read" (422).
    return _ERRORS.get(error.code, UndecodableAudio)(error.message)


def decode_file(path: Path, *, limits: DecodeLimits) -> DecodedAudio:
    """Decode the file at `path`; raises UnsupportedAudioFormat, UndecodableAudio,
    AudioTooLong, EmptyAudio or DecoderUnavailable."""
    try:
        info = probe_file(path, limits=probe_limits(limits.tool))
        # Decoded straight to float32 (exact for up to 24-bit sources): the buffer ffmpeg
        # fills *is* the sample array, with no integer copy beside it.
        pcm = decode_pcm(path, info, limits, encoding="f32")
    except MediaError as exc:
        raise _analysis_error(exc) from exc
    samples = np.frombuffer(pcm.data, dtype="<f4").reshape(-1, pcm.channels)
    # Reported as before: 4 bytes for lossless sources of more than 16 bits, else 2.
    lossless = info.codec.startswith("pcm_") or info.codec in _LOSSLESS
    return DecodedAudio(
        samples=samples,
        sample_rate=pcm.sample_rate,
        channels=pcm.channels,
        sample_width=4 if lossless and info.bytes_per_sample > 2 else 2,
        mono=to_mono(samples),
        source_channels=info.channels,
    )
