"""Audio made by the tests themselves: WAV from the standard library, compressed via ffmpeg."""

from __future__ import annotations

import io
import math
import os
import struct
import wave

from pydub import AudioSegment


def wav_bytes(
    seconds: float = 2.0, *, freq: float = 440.0, rate: int = 16000, channels: int = 1
) -> bytes:
    frames = int(seconds * rate)
    samples = bytearray()
    for i in range(frames):
        value = int(0.5 * 32767 * math.sin(2 * math.pi * freq * i / rate))
        samples += struct.pack("<h", value) * channels
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(bytes(samples))
    return buffer.getvalue()


def pcm_wav(pcm: bytes, *, rate: int, channels: int = 1) -> bytes:
    """A canonical 44-byte-header WAV around 16-bit PCM (fast for large, generated bodies)."""
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + len(pcm),
        b"WAVE",
        b"fmt ",
        16,
        1,
        channels,
        rate,
        rate * 2 * channels,
        2 * channels,
        16,
        b"data",
        len(pcm),
    )
    return header + pcm


def white_noise_wav(megabytes: int, rate: int = 44100) -> bytes:
    """Mono white noise: FLAC cannot shrink it, so the stored file stays about this large."""
    return pcm_wav(os.urandom(megabytes * 1024 * 1024 // 2 * 2), rate=rate)


def encoded(wav: bytes, fmt: str) -> bytes:
    """`wav` re-encoded by ffmpeg through pydub (mp3, ogg, flac …)."""
    buffer = io.BytesIO()
    AudioSegment.from_wav(io.BytesIO(wav)).export(buffer, format=fmt)
    return buffer.getvalue()
