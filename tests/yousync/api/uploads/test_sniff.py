"""Magic-byte sniffing and the WAV truncation check (pure functions)."""

from __future__ import annotations

import pytest

from tests.helpers.audio import encoded, wav_bytes
from yousync.api.uploads.sniff import sniff_audio_format, wav_problem

WAV = wav_bytes(0.5)


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (WAV[:16], "wav"),
        (encoded(WAV, "mp3")[:16], "mp3"),
        (encoded(WAV, "flac")[:16], "flac"),
        (encoded(WAV, "ogg")[:16], "ogg"),
        (b"\x00\x00\x00\x20ftypM4A \x00\x00", "m4a"),
        (b"\x1a\x45\xdf\xa3" + b"\x00" * 12, "webm"),
        (b"\xff\xf1\x50\x80" + b"\x00" * 12, "aac"),
        (b"\xff\xfb\x90\x64" + b"\x00" * 12, "mp3"),
        (b"hello world, not audio", None),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR", None),
        (b"PK\x03\x04" + b"\x00" * 12, None),
        (b"", None),
    ],
)
def test_sniff_when_given_first_bytes_then_names_the_format(
    head: bytes, expected: str | None
) -> None:
    assert sniff_audio_format(head) == expected


def test_wav_problem_when_complete_then_none() -> None:
    assert wav_problem(WAV[:4096], len(WAV)) is None


def test_wav_problem_when_data_cut_then_truncated() -> None:
    assert wav_problem(WAV[:4096], 3000) == "truncated_audio"


def test_wav_problem_when_header_only_then_empty() -> None:
    assert wav_problem(WAV[:44], 44) == "empty_audio"


def test_wav_problem_when_streaming_writer_size_then_accepted() -> None:
    streaming = WAV[:40] + b"\xff\xff\xff\xff" + WAV[44:]
    assert wav_problem(streaming[:4096], len(streaming)) is None
