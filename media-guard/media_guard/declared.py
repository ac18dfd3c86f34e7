"""The length a file states in its own header, read from its first and last bytes, no ffmpeg.

Why: the API holds these bytes anyway (the sniffing window, and the spool file's tail), and a
file that declares six hours can be refused with 422 `audio_too_long` before it becomes a job,
the way a text file gets 415: six such uploads then never wait in the queue in front of anyone.
Only formats whose length is in a fixed place are read — WAV (data size over the frame size),
FLAC (STREAMINFO's sample count) and Ogg Opus/Vorbis (the last page's granule position); for
the rest, and for a header that does not say, the answer is None and the worker's probe and
bounded decode judge the file. A header that *under*states its length is the worker's to catch.
"""

from __future__ import annotations

import struct

# Ogg pages are at most 65 307 bytes: the last complete one starts within this many of the end.
TAIL_BYTES = 65_536
_OPUS_RATE = 48_000


def _wav(head: bytes, total_size: int) -> float | None:
    offset, rate, block = 12, 0, 0
    while offset + 8 <= len(head):
        chunk, size = head[offset : offset + 4], struct.unpack_from("<I", head, offset + 4)[0]
        if chunk == b"fmt " and offset + 24 <= len(head):
            rate = struct.unpack_from("<I", head, offset + 12)[0]
            block = struct.unpack_from("<H", head, offset + 20)[0]
        elif chunk == b"data":
            if not rate or not block:
                return None
            payload = total_size - (offset + 8)
            if size not in (0, 0xFFFFFFFF):
                payload = min(payload, size)
            return max(payload, 0) / block / rate
        offset += 8 + size + (size & 1)
    return None


def _flac(head: bytes) -> float | None:
    if len(head) < 26 or head[4] & 0x7F != 0:  # STREAMINFO is always the first block
        return None
    fields = int.from_bytes(head[18:26], "big")
    rate, samples = fields >> 44, fields & ((1 << 36) - 1)
    return samples / rate if rate and samples else None


def _ogg_rate(head: bytes) -> tuple[int, int] | None:
    """(granule rate, pre-skip) of the first logical stream, from its identification header."""
    opus = head.find(b"OpusHead")
    if opus >= 0 and opus + 12 <= len(head):
        return _OPUS_RATE, struct.unpack_from("<H", head, opus + 10)[0]
    vorbis = head.find(b"\x01vorbis")
    if vorbis >= 0 and vorbis + 16 <= len(head):
        return struct.unpack_from("<I", head, vorbis + 12)[0], 0
    return None


def _ogg(head: bytes, tail: bytes) -> float | None:
    found = _ogg_rate(head)
    if found is None or not found[0]:
        return None
    rate, pre_skip = found
    page = tail.rfind(b"OggS")
    while page >= 0:
        if page + 14 <= len(tail):
            (granule,) = struct.unpack_from("<q", tail, page + 6)
            if granule >= 0:  # -1: no packet ends on this page
                return float(max(granule - pre_skip, 0) / rate)
        page = tail.rfind(b"OggS", 0, page)
    return None


def declared_seconds(audio_format: str, head: bytes, tail: bytes, total_size: int) -> float | None:
    """The length the file's header states, or None when it does not (or we do not read it)."""
    if audio_format == "wav":
        return _wav(head, total_size)
    if audio_format == "flac":
        return _flac(head)
    if audio_format == "ogg":
        return _ogg(head, tail)
    return None
