"""Sniffing by magic bytes, and what may follow an ID3 tag."""

from __future__ import annotations

from pathlib import Path

import pytest

from media_guard.formats import bytes_needed_to_sniff, id3_end, sniff_audio_format, sniff_file
from tests.helpers import hostile_media

MPEG_FRAME = b"\xff\xfb\x90\x64" + b"\x00" * 12
ADTS_FRAME = b"\xff\xf1\x50\x80" + b"\x00" * 12


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (hostile_media.EMPTY_ID3 + MPEG_FRAME, "mp3"),
        (hostile_media.EMPTY_ID3 + ADTS_FRAME, "aac"),
        (hostile_media.EMPTY_ID3 + hostile_media.EMPTY_ID3 + MPEG_FRAME, "mp3"),
        (hostile_media.concat_script("other-job"), None),
        (hostile_media.hls_playlist("/etc/passwd"), None),
        (hostile_media.EMPTY_ID3 + b"fLaC" + b"\x00" * 12, None),
    ],
    ids=["mp3", "aac", "two-tags", "concat-script", "hls-playlist", "flac-behind-id3"],
)
def test_sniff_when_id3_tag_then_judged_by_what_follows_it(
    head: bytes, expected: str | None
) -> None:
    assert sniff_audio_format(head) == expected


def test_sniff_when_id3_tag_ends_beyond_the_head_then_provisional_mp3_unless_whole_file() -> None:
    head = hostile_media.id3_padding(8192)[:4096]

    assert sniff_audio_format(head) == "mp3"
    assert sniff_audio_format(head, whole_file=True) is None
    assert bytes_needed_to_sniff(head) == 8202 + 16
    assert id3_end(head) == 8202


def test_sniff_when_no_id3_tag_then_sixteen_bytes_suffice() -> None:
    assert bytes_needed_to_sniff(b"fLaC" + b"\x00" * 12) == 16


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (hostile_media.id3_padding(8192) + MPEG_FRAME, "mp3"),
        (hostile_media.concat_script("victim.wav", tag=hostile_media.id3_padding(8192)), None),
        (hostile_media.id3_padding(8192)[:5000], None),
        (hostile_media.id3_padding(2) + hostile_media.id3_padding(8192) + MPEG_FRAME, "mp3"),
        (hostile_media.id3_padding(8192) + ADTS_FRAME, "aac"),
        (hostile_media.id3_padding(4000) + hostile_media.id3_padding(3) * 9 + MPEG_FRAME, None),
    ],
    ids=[
        "mp3-with-cover-art",
        "concat-behind-8k-tag",
        "file-ends-inside-the-tag",
        "tiny-tag-then-large-tag",
        "adts-behind-8k-tag",
        "ten-chained-tags",
    ],
)
def test_sniff_file_when_tag_is_larger_than_any_head_then_looks_behind_it_on_disk(
    tmp_path: Path, body: bytes, expected: str | None
) -> None:
    path = tmp_path / "upload"
    path.write_bytes(body)

    assert sniff_file(path) == expected


def test_sniff_when_more_chained_tags_than_any_recorder_writes_then_refused() -> None:
    head = hostile_media.id3_padding(3) * 9 + MPEG_FRAME

    assert sniff_audio_format(head) is None
    assert id3_end(head) == -1
