"""Which audio formats we accept, told from magic bytes, and what each may contain.

A format is never taken from a file name, a Content-Type or ffmpeg's own guess: ffmpeg's
probing happily recognises concat scripts and HLS playlists, whose demuxers open the files they
name. The sniffed name selects a `FormatRule`: the demuxer forced on ffprobe and ffmpeg, and
the container and codec names ffprobe must report before anything is decoded.

An ID3v2 tag is only a prefix: what follows it must be MPEG audio (or ADTS AAC), or the file
is refused. The tag can be larger than the bytes the API keeps for sniffing (cover art), so
`sniff_file` looks behind it on disk, where the worker and the analysis server call it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SNIFF_BYTES = 16
_ID3_HEADER = 10

CONTENT_TYPES = {
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "flac": "audio/flac",
    "ogg": "audio/ogg",
    "m4a": "audio/mp4",
    "aac": "audio/aac",
    "webm": "audio/webm",
}

_PCM = frozenset(
    {
        "pcm_u8",
        "pcm_s16le",
        "pcm_s24le",
        "pcm_s32le",
        "pcm_f32le",
        "pcm_f64le",
        "pcm_alaw",
        "pcm_mulaw",
    }
)


@dataclass(frozen=True)
class FormatRule:
    """How one sniffed format is opened, and what ffprobe may find inside it."""

    demuxer: str
    format_names: frozenset[str]
    codecs: frozenset[str]
    # Demuxer options that close doors the defaults might open (e.g. MOV data references).
    options: tuple[str, ...] = ()
    # Whether the container states its length, or ffprobe only estimates it from the bitrate.
    exact_duration: bool = True


RULES: dict[str, FormatRule] = {
    "wav": FormatRule("wav", frozenset({"wav"}), _PCM),
    "flac": FormatRule("flac", frozenset({"flac"}), frozenset({"flac"})),
    "ogg": FormatRule("ogg", frozenset({"ogg"}), frozenset({"opus", "vorbis", "flac"})),
    "webm": FormatRule(
        "matroska", frozenset({"matroska,webm"}), frozenset({"opus", "vorbis", "flac"})
    ),
    "m4a": FormatRule(
        "mov",
        frozenset({"mov,mp4,m4a,3gp,3g2,mj2"}),
        frozenset({"aac", "alac", "mp3"}),
        options=("-enable_drefs", "0"),
    ),
    "mp3": FormatRule("mp3", frozenset({"mp3"}), frozenset({"mp3"}), exact_duration=False),
    "aac": FormatRule("aac", frozenset({"aac"}), frozenset({"aac"}), exact_duration=False),
}


def rule_for(audio_format: str) -> FormatRule | None:
    return RULES.get(audio_format)


def id3_end(head: bytes) -> int | None:
    """Offset of the first byte after the leading ID3v2 tags (several may follow each other),
    or None when `head` does not start with one. May point beyond `head`."""
    offset = 0
    while head[offset : offset + 3] == b"ID3" and len(head) >= offset + _ID3_HEADER:
        flags = head[offset + 5]
        size = 0
        for byte in head[offset + 6 : offset + 10]:
            size = (size << 7) | (byte & 0x7F)  # "syncsafe": 7 bits per byte
        offset += _ID3_HEADER + size + (_ID3_HEADER if flags & 0x10 else 0)
        if offset + 3 > len(head):
            break
    return offset or None


def bytes_needed_to_sniff(head: bytes) -> int:
    """How many leading bytes `sniff_audio_format` wants: more than SNIFF_BYTES only behind
    an ID3 tag, whose end must be seen to know what it prefixes."""
    end = id3_end(head)
    return SNIFF_BYTES if end is None else end + SNIFF_BYTES


def _mpeg_frame(head: bytes) -> str | None:
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        # Frame sync: MPEG audio layers 1–3 have non-zero layer bits; ADTS AAC has layer 00.
        if head[1] & 0xF6 == 0xF0:
            return "aac"
        if head[1] & 0x06:
            return "mp3"
    return None


def sniff_audio_format(head: bytes, *, whole_file: bool = False) -> str | None:
    """The format named by the magic bytes at the start of `head`, or None.

    Behind an ID3 tag only MPEG audio or ADTS AAC is accepted. When the tag ends beyond `head`
    the answer is a provisional "mp3" (the caller that has the whole file must `sniff_file`),
    unless `head` is the `whole_file`: then nothing follows the tag, and it is no audio.
    """
    if len(head) >= 12 and head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        return "wav"
    if head.startswith(b"fLaC"):
        return "flac"
    if head.startswith(b"OggS"):
        return "ogg"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "webm"
    if len(head) >= 8 and head[4:8] == b"ftyp":
        return "m4a"
    end = id3_end(head)
    if end is not None:
        if end + 4 > len(head):
            return None if whole_file else "mp3"
        return _mpeg_frame(head[end:])
    return _mpeg_frame(head)


def sniff_file(path: Path) -> str | None:
    """`sniff_audio_format` on a whole file, looking behind an ID3 tag however large."""
    with path.open("rb") as handle:
        head = handle.read(SNIFF_BYTES)
        end = id3_end(head)
        while end is not None and end + 4 > len(head):
            handle.seek(0)
            head = handle.read(end + SNIFF_BYTES)
            if len(head) < end + 4:
                return None  # the file ends inside (or right after) its tags
            end = id3_end(head)
    return sniff_audio_format(head, whole_file=True)
