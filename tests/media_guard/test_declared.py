"""Lengths read from headers, checked against what ffprobe (not our code) says of the same files."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from media_guard.declared import TAIL_BYTES, declared_seconds
from tests.helpers import hostile_media


def ffprobe_seconds(path: Path) -> float:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "json", str(path)],
        capture_output=True,
        check=True,
    ).stdout
    return float(json.loads(out)["format"]["duration"])


def declared(path: Path, audio_format: str) -> float | None:
    data = path.read_bytes()
    return declared_seconds(audio_format, data[:4096], data[-TAIL_BYTES:], len(data))


@pytest.mark.parametrize(
    ("name", "audio_format", "codec"),
    [
        ("take.wav", "wav", ["-ac", "2", "-c:a", "pcm_s24le"]),
        ("take.wav", "wav", ["-c:a", "pcm_mulaw"]),
        ("take.flac", "flac", []),
        ("take.opus", "ogg", ["-c:a", "libopus"]),
        ("take.ogg", "ogg", ["-c:a", "libvorbis"]),
    ],
    ids=["wav-s24-stereo", "wav-mulaw", "flac", "ogg-opus", "ogg-vorbis"],
)
def test_declared_seconds_when_ffmpeg_wrote_the_file_then_agrees_with_ffprobe(
    tmp_path: Path, name: str, audio_format: str, codec: list[str]
) -> None:
    path = tmp_path / name
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=f=330:d=7.25", *codec, str(path)],
        check=True,
        timeout=60,
    )

    found = declared(path, audio_format)

    assert found == pytest.approx(ffprobe_seconds(path), abs=0.03)
    assert found == pytest.approx(7.25, abs=0.03)


def test_declared_seconds_when_flac_header_lies_then_the_lie_is_what_it_reads(
    tmp_path: Path,
) -> None:
    # Understatement is the worker's to catch (its decode stops past the declared length).
    bomb = tmp_path / "bomb.flac"
    bomb.write_bytes(hostile_media.lying_flac(tmp_path / "src.flac", declared=1, actual=60))

    assert declared(bomb, "flac") == 1.0


def test_declared_seconds_when_written_to_a_pipe_or_not_read_then_none(tmp_path: Path) -> None:
    piped = tmp_path / "piped.flac"
    piped.write_bytes(
        subprocess.run(
            ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=d=3", "-f", "flac", "pipe:1"],
            capture_output=True,
            check=True,
        ).stdout
    )
    mp3 = tmp_path / "take.mp3"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=d=3", str(mp3)], check=True)

    assert declared(piped, "flac") is None
    assert declared(mp3, "mp3") is None
