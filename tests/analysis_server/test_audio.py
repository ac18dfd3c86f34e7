"""Decoding real files from disk: stdlib WAV, ffmpeg formats, and the refusals."""

from __future__ import annotations

import shutil
import struct
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from analysis_server import features
from analysis_server.audio import decode_file
from analysis_server.errors import (
    AudioTooLong,
    EmptyAudio,
    UndecodableAudio,
    UnsupportedAudioFormat,
)
from media_guard import DecodeLimits
from tests.helpers import hostile_media

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")


def write_wav(
    path: Path, *, hz: float = 440.0, seconds: float = 1.0, rate: int = 22_050, channels: int = 1
) -> Path:
    t = np.arange(round(seconds * rate)) / rate
    mono = (0.5 * np.sin(2 * np.pi * hz * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(np.repeat(mono[:, None], channels, axis=1).tobytes())
    return path


def write_float_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    """WAVE_FORMAT_IEEE_FLOAT (3), which the stdlib `wave` module cannot write."""
    data = samples.astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def test_decode_file_when_int16_wav_then_format_and_duration_match(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "clip", seconds=1.5, rate=22_050, channels=2)

    audio = decode_file(path, limits=DecodeLimits(max_seconds=600))

    assert (audio.sample_rate, audio.channels, audio.sample_width) == (22_050, 2, 2)
    assert audio.samples.shape == (33_075, 2)
    assert abs(audio.duration_ms - 1500) <= 10
    assert features.peak_dbfs(audio.samples) == pytest.approx(-6.02, abs=0.05)


@needs_ffmpeg
def test_decode_file_when_float_wav_then_levels_are_right_not_reinterpreted_bits(
    tmp_path: Path,
) -> None:
    t = np.arange(16_000) / 16_000
    path = write_float_wav(tmp_path / "float", 0.5 * np.sin(2 * np.pi * 440 * t), 16_000)

    audio = decode_file(path, limits=DecodeLimits(max_seconds=600))

    assert audio.sample_rate == 16_000
    assert features.peak_dbfs(audio.samples) == pytest.approx(-6.02, abs=0.1)


@needs_ffmpeg
def test_decode_file_when_flac_without_extension_then_decoded_by_ffmpeg(tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "src.wav", seconds=2.0, rate=44_100)
    flac = tmp_path / "upload"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(wav), "-f", "flac", str(flac)], check=True)

    audio = decode_file(flac, limits=DecodeLimits(max_seconds=600))

    assert audio.sample_rate == 44_100
    assert abs(audio.duration_ms - 2000) <= 10
    assert features.estimate_pitch_hz(audio.mono, audio.sample_rate) == pytest.approx(440, rel=0.02)


@needs_ffmpeg
def test_decode_file_when_ogg_vorbis_then_decoded(tmp_path: Path) -> None:
    # A float-plane codec: pydub maps the probed sample format to the PCM codec it asks for.
    wav = write_wav(tmp_path / "src.wav", seconds=1.0, rate=44_100)
    ogg = tmp_path / "upload"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(wav), "-c:a", "libvorbis", "-f", "ogg", str(ogg)],
        check=True,
    )

    audio = decode_file(ogg, limits=DecodeLimits(max_seconds=600))

    assert abs(audio.duration_ms - 1000) <= 30


def test_decode_file_when_text_then_unsupported_format(tmp_path: Path) -> None:
    path = tmp_path / "notes"
    path.write_text("this is not audio at all\n" * 20)

    with pytest.raises(UnsupportedAudioFormat):
        decode_file(path, limits=DecodeLimits(max_seconds=600))


def test_decode_file_when_wav_longer_than_limit_then_too_long(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "long", seconds=2.0, rate=8_000)

    with pytest.raises(AudioTooLong):
        decode_file(path, limits=DecodeLimits(max_seconds=1.5))


@needs_ffmpeg
def test_decode_file_when_compressed_longer_than_limit_then_too_long(tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "src.wav", seconds=4.0, rate=8_000)
    flac = tmp_path / "upload"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(wav), "-f", "flac", str(flac)], check=True)

    with pytest.raises(AudioTooLong):
        decode_file(flac, limits=DecodeLimits(max_seconds=2.0))


def test_decode_file_when_wav_has_no_frames_then_empty_audio(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "empty", seconds=0.0)

    with pytest.raises(EmptyAudio):
        decode_file(path, limits=DecodeLimits(max_seconds=600))


# --- hostile files -------------------------------------------------------------------------


@needs_ffmpeg
@pytest.mark.parametrize("tag_bytes", [0, 8192], ids=["bare-id3", "id3-beyond-4k"])
def test_decode_file_when_concat_script_names_a_file_beside_it_then_unsupported_not_that_file(
    tmp_path: Path, tag_bytes: int
) -> None:
    write_wav(tmp_path / "victim.wav", seconds=2.0)
    tag = hostile_media.id3_padding(tag_bytes) if tag_bytes else hostile_media.EMPTY_ID3
    script = tmp_path / "upload"
    script.write_bytes(hostile_media.concat_script("victim.wav", tag=tag))

    with pytest.raises(UnsupportedAudioFormat) as refused:
        decode_file(script, limits=DecodeLimits(max_seconds=600))
    assert str(tmp_path) not in refused.value.message


@needs_ffmpeg
def test_decode_file_when_flac_understates_its_length_then_refused_after_a_second(
    tmp_path: Path,
) -> None:
    bomb = tmp_path / "bomb"
    bomb.write_bytes(hostile_media.lying_flac(tmp_path / "src.flac", declared=1, actual=600))

    with pytest.raises(UndecodableAudio, match=r"declares 1\.0 s"):
        decode_file(bomb, limits=DecodeLimits(max_seconds=600))


@needs_ffmpeg
def test_decode_file_when_8_channels_then_at_most_the_ceiling_and_source_count_kept(
    tmp_path: Path,
) -> None:
    source = hostile_media.silent_flac(tmp_path / "eight.flac", seconds=2, channels=8)

    audio = decode_file(source, limits=DecodeLimits(max_seconds=600, max_channels=2))

    assert (audio.channels, audio.source_channels, audio.samples.shape) == (2, 8, (96_000, 2))
