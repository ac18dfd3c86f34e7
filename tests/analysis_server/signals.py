"""Test signals whose right answers are known by construction, plus speech from espeak-ng.

Synthetic material comes first: sines for pitch and levels, and "tone bursts" (syllable-like
notes with pauses of random length) as stand-in speech whose rhythm is known exactly. Real
speech comes from espeak-ng (Debian package `espeak-ng`) when it is installed; tests that need
it carry `needs_espeak` and are skipped with the reason otherwise.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np
import pytest

RATE = 16_000

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None,
    reason="espeak-ng is not installed (Debian: apt-get install espeak-ng); "
    "the speech-material tests render their sentences with it",
)
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")


def sine(hz: float, seconds: float, *, amplitude: float = 0.5, rate: int = RATE) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def silence(seconds: float, *, rate: int = RATE) -> np.ndarray:
    return np.zeros(round(seconds * rate), dtype=np.float32)


def delayed(signal: np.ndarray, ms: float, *, rate: int = RATE) -> np.ndarray:
    """`signal` starting `ms` later (silence in front), as a late take would."""
    return np.concatenate([silence(ms / 1000, rate=rate), signal])


def tone_bursts(seed: int, seconds: float = 4.0, *, rate: int = RATE) -> np.ndarray:
    """Speech-like rhythm: notes of 80–400 ms at 120–250 Hz, with 50–300 ms pauses, shaped by
    a Hann window like syllables. Two seeds give two unrelated "lines"."""
    rng = np.random.default_rng(seed)
    pieces: list[np.ndarray] = [silence(0.2, rate=rate)]
    while sum(piece.size for piece in pieces) < seconds * rate:
        on, off, hz = rng.uniform(0.08, 0.4), rng.uniform(0.05, 0.3), rng.uniform(120, 250)
        note = sine(hz, on, amplitude=0.4, rate=rate) * np.hanning(round(on * rate))
        pieces += [note.astype(np.float32), silence(off, rate=rate)]
    return np.concatenate(pieces)[: round(seconds * rate)]


def to_wav(samples: np.ndarray, rate: int = RATE) -> bytes:
    """16-bit PCM WAV of float samples in [-1, 1], mono (1-D) or (frames, channels)."""
    frames = samples.reshape(samples.shape[0], -1)
    pcm = np.clip(np.round(frames * 32767), -32768, 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(frames.shape[1])
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())
    return buffer.getvalue()


def from_wav(data: bytes) -> tuple[np.ndarray, int]:
    """Mono float samples and the rate of a 16-bit WAV (the first channel if several)."""
    with wave.open(io.BytesIO(data)) as source:
        rate, channels = source.getframerate(), source.getnchannels()
        raw = source.readframes(source.getnframes())
    samples = np.frombuffer(raw, dtype="<i2").reshape(-1, channels)[:, 0]
    return (samples.astype(np.float32) / 32768), rate


def espeak(text: str, *, voice: str = "en", words_per_minute: int = 175) -> bytes:
    """`text` spoken by espeak-ng, as WAV bytes (22.05 kHz mono)."""
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "speech.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(words_per_minute), "-w", str(path), text],
            check=True,
            capture_output=True,
            timeout=30,
        )
        return path.read_bytes()


# Two sentences each, so each line has a pause long enough to split its voiced segments.
LINE = "The quick brown fox jumps over the lazy dog. It sleeps by the river."
OTHER_LINE = "Please remember your umbrella. It will rain all afternoon."
