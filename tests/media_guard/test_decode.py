"""Probing under a format's rule and decoding within bounds, on files ffmpeg made."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from media_guard import DecodeLimits, MediaError, decode_pcm, probe, rule_for, sniff_file
from media_guard.decode import length_cap_seconds
from media_guard.formats import RULES
from tests.helpers import hostile_media


def make(path: Path, *args: str) -> Path:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args, str(path)], check=True, timeout=60)
    return path


def tone(path: Path, seconds: float, *, channels: int = 1, rate: int = 44100) -> Path:
    layout = {1: "mono", 2: "stereo"}[channels]
    return make(
        path,
        *("-f", "lavfi", "-i", f"sine=f=440:r={rate}:d={seconds}"),
        *("-af", f"aformat=channel_layouts={layout}"),
    )


def probed(path: Path):  # type: ignore[no-untyped-def]
    sniffed = sniff_file(path)
    assert sniffed is not None
    rule = rule_for(sniffed)
    assert rule is not None
    return probe(path, rule)


@pytest.mark.parametrize("extension", ["wav", "flac", "mp3", "ogg", "m4a", "webm", "aac"])
def test_decode_pcm_when_each_accepted_format_then_its_length_within_a_frame(
    tmp_path: Path, extension: str
) -> None:
    source = tone(tmp_path / f"take.{extension}", 3.0, channels=2)

    pcm = decode_pcm(source, probed(source), DecodeLimits(max_channels=1))

    assert pcm.channels == 1
    assert pcm.seconds == pytest.approx(3.0, abs=0.06)


def test_probe_when_concat_script_is_forced_as_mp3_then_nothing_it_names_is_read(
    tmp_path: Path,
) -> None:
    # Even past the sniffer: forced to the mp3 demuxer, a concat script is just bad MPEG.
    tone(tmp_path / "victim.wav", 2.0)
    script = tmp_path / "upload"
    script.write_bytes(hostile_media.concat_script("victim.wav"))

    with pytest.raises(MediaError) as refused:
        probe(script, RULES["mp3"])

    assert refused.value.code == "undecodable_audio"
    assert str(tmp_path) not in refused.value.message


def test_probe_when_wav_carries_mp3_then_codec_off_the_allow_list(tmp_path: Path) -> None:
    source = make(
        tmp_path / "take.wav", "-f", "lavfi", "-i", "sine=d=1", "-c:a", "libmp3lame", "-f", "wav"
    )

    with pytest.raises(MediaError) as refused:
        probed(source)

    assert refused.value.code == "unsupported_audio_format"


def test_decode_pcm_when_header_understates_the_length_then_stops_soon_and_refuses(
    tmp_path: Path,
) -> None:
    bomb = tmp_path / "bomb.flac"
    bomb.write_bytes(hostile_media.lying_flac(tmp_path / "src.flac", declared=1, actual=600))
    info = probed(bomb)

    assert info.exact_duration == 1.0
    assert length_cap_seconds(info, 600) == 2.5  # 1 s + 0.5 s tolerance + 1 s to prove it
    with pytest.raises(MediaError) as refused:
        decode_pcm(bomb, info, DecodeLimits())
    assert refused.value.code == "audio_longer_than_declared"


def test_decode_pcm_when_declared_length_is_above_the_limit_then_refused_without_decoding(
    tmp_path: Path,
) -> None:
    long = hostile_media.silent_flac(tmp_path / "long.flac", seconds=3600, rate=8000)

    with pytest.raises(MediaError) as refused:
        decode_pcm(long, probed(long), DecodeLimits(max_seconds=600))

    assert refused.value.code == "audio_too_long"
    assert "3600 s" in refused.value.message


def test_decode_pcm_when_length_unknown_then_decoding_stops_just_past_the_limit(
    tmp_path: Path,
) -> None:
    piped = subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=d=30", "-f", "flac", "pipe:1"],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    source = tmp_path / "piped.flac"
    source.write_bytes(piped)
    info = probed(source)
    assert info.exact_duration is None

    with pytest.raises(MediaError) as refused:
        decode_pcm(source, info, DecodeLimits(max_seconds=10))

    assert refused.value.code == "audio_too_long"


def test_decode_pcm_when_8_channels_at_96_khz_then_ffmpeg_returns_the_ceilings(
    tmp_path: Path,
) -> None:
    source = hostile_media.silent_flac(tmp_path / "wide.flac", seconds=2, channels=8, rate=96000)

    pcm = decode_pcm(source, probed(source), DecodeLimits(max_channels=2, max_sample_rate=48000))

    assert (pcm.channels, pcm.sample_rate, len(pcm.data)) == (2, 48000, 2 * 48000 * 2 * 2)


def test_decode_pcm_when_cut_short_then_truncated(tmp_path: Path) -> None:
    whole = tone(tmp_path / "whole.flac", 4.0)
    cut = tmp_path / "cut.flac"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])

    with pytest.raises(MediaError) as refused:
        decode_pcm(cut, probed(cut), DecodeLimits())

    assert refused.value.code == "truncated_audio"


def test_decode_pcm_when_every_packet_is_discarded_then_refused_from_packet_time_undecoded(
    tmp_path: Path,
) -> None:
    # 40 minutes of blocks that decode to nothing: no output cap could trip, and the decode
    # would burn CPU through all of them before finding the file empty.
    source = tmp_path / "discarded.webm"
    source.write_bytes(hostile_media.webm_all_discarded(20_000))

    with pytest.raises(MediaError) as refused:
        decode_pcm(source, probed(source), DecodeLimits(max_seconds=600))

    assert refused.value.code == "audio_too_long"


def test_probe_when_a_video_track_rides_along_then_its_decoder_is_never_opened(
    tmp_path: Path,
) -> None:
    source = make(
        tmp_path / "take.webm",
        *("-f", "lavfi", "-i", "sine=d=2", "-f", "lavfi", "-i", "color=red:s=32x32:d=1"),
        *("-map", "0", "-map", "1", "-c:a", "libopus", "-c:v", "png", "-f", "matroska"),
    )

    with pytest.raises(MediaError) as refused:
        probed(source)

    assert refused.value.code == "unsupported_audio_format"


def test_probe_when_mp3_has_cover_art_then_accepted(tmp_path: Path) -> None:
    source = make(
        tmp_path / "take.mp3",
        *("-f", "lavfi", "-i", "sine=d=2", "-f", "lavfi", "-i", "color=red:s=32x32:d=1"),
        *("-map", "0", "-map", "1", "-frames:v", "1", "-c:v", "png"),
        *("-disposition:v", "attached_pic", "-id3v2_version", "3"),
    )

    assert probed(source).codec == "mp3"
    assert decode_pcm(source, probed(source), DecodeLimits()).seconds == pytest.approx(2, abs=0.1)
