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
# Recorders write one ID3 tag, rarely two; a chain of many is a way to make sniffing slow.
MAX_ID3_TAGS = 8

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


# ffmpeg's decoder names per codec name, where they differ (the whitelist matches decoders).
_DECODERS = {
    "mp3": ("mp3float", "mp3"),
    "aac": ("aac", "aac_fixed"),
    "opus": ("opus", "libopus"),
    "vorbis": ("vorbis", "libvorbis"),
}


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
    # Cover art (ID3 APIC, FLAC PICTURE, MP4 covr) is a picture stream ffprobe decodes too.
    pictures: bool = False
    # Whether packets can be marked for discarding (Matroska DiscardPadding, MP4 edit lists):
    # a decoder then spends CPU on audio that never comes out, which no output cap can see.
    discards: bool = False

    @property
    def decoders(self) -> str:
        """The `-codec_whitelist`: ffmpeg may open these decoders on this file and no other."""
        names = [name for codec in sorted(self.codecs) for name in _DECODERS.get(codec, (codec,))]
        return ",".join(names + (["mjpeg", "png"] if self.pictures else []))


RULES: dict[str, FormatRule] = {
    "wav": FormatRule("wav", frozenset({"wav"}), _PCM),
    "flac": FormatRule("flac", frozenset({"flac"}), frozenset({"flac"}), pictures=True),
    "ogg": FormatRule(
        "ogg", frozenset({"ogg"}), frozenset({"opus", "vorbis", "flac"}), pictures=True
    ),
    "webm": FormatRule(
        "matroska",
        frozenset({"matroska,webm"}),
        frozenset({"opus", "vorbis", "flac"}),
        discards=True,
    ),
    "m4a": FormatRule(
        "mov",
        frozenset({"mov,mp4,m4a,3gp,3g2,mj2"}),
        frozenset({"aac", "alac", "mp3"}),
        options=("-enable_drefs", "0"),
        pictures=True,
        discards=True,
    ),
    "mp3": FormatRule(
        "mp3", frozenset({"mp3"}), frozenset({"mp3"}), exact_duration=False, pictures=True
    ),
    "aac": FormatRule("aac", frozenset({"aac"}), frozenset({"aac"}), exact_duration=False),
}


def rule_for(audio_format: str) -> FormatRule | None:
    return RULES.get(audio_format)


def _id3_size(header: bytes) -> int | None:
    """Bytes of the ID3v2 tag whose 10-byte header is `header` (footer included), or None."""
    if len(header) < _ID3_HEADER or header[:3] != b"ID3":
        return None
    size = 0
    for byte in header[6:10]:
        size = (size << 7) | (byte & 0x7F)  # "syncsafe": 7 bits per byte
    return _ID3_HEADER + size + (_ID3_HEADER if header[5] & 0x10 else 0)


def id3_end(head: bytes) -> int | None:
    """Offset of the first byte after the leading ID3v2 tags (several may follow each other),
    or None when `head` does not start with one. May point beyond `head`. More than
    MAX_ID3_TAGS tags in a row is not a recording (-1: refuse)."""
    offset, tags = 0, 0
    while (size := _id3_size(head[offset : offset + _ID3_HEADER])) is not None:
        tags += 1
        if tags > MAX_ID3_TAGS:
            return -1
        offset += size
    if tags == 0 and head[:3] == b"ID3":
        return len(head) + _ID3_HEADER  # a header cut short: its end lies beyond `head`
    return offset or None


def bytes_needed_to_sniff(head: bytes) -> int:
    """How many leading bytes `sniff_audio_format` wants: more than SNIFF_BYTES only behind
    an ID3 tag, whose end must be seen to know what it prefixes."""
    end = id3_end(head)
    return SNIFF_BYTES if end is None or end < 0 else end + SNIFF_BYTES


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
        if end < 0:
            return None
        if end + 4 > len(head):
            return None if whole_file else "mp3"
        return _mpeg_frame(head[end:])
    return _mpeg_frame(head)


def sniff_file(path: Path) -> str | None:
    """`sniff_audio_format` on a whole file, looking behind ID3 tags however large: walked
    forward header by header (at most MAX_ID3_TAGS), so the cost does not grow with the file."""
    with path.open("rb") as handle:
        head = handle.read(SNIFF_BYTES)
        if _id3_size(head[:_ID3_HEADER]) is None:
            return sniff_audio_format(head, whole_file=True)
        offset = 0
        for _ in range(MAX_ID3_TAGS):
            handle.seek(offset)
            size = _id3_size(handle.read(_ID3_HEADER))
            if size is None:
                break
            offset += size
        else:
            return None  # more tags than any recorder writes
        handle.seek(offset)
        return _mpeg_frame(handle.read(SNIFF_BYTES))
