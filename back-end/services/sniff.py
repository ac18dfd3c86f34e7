"""Recognise audio from its first bytes, and catch a truncated WAV from its header alone.

Why in the API: a text file named `.wav` must get 415 at once, not a job that fails a minute
later. Formats are told by magic bytes, never by file name or the client's Content-Type.
Compressed formats are validated for real by the worker's decode (pydub/ffmpeg).
"""

from __future__ import annotations

import struct

SNIFF_BYTES = 16
HEAD_BYTES = 4096

CONTENT_TYPES = {
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "flac": "audio/flac",
    "ogg": "audio/ogg",
    "m4a": "audio/mp4",
    "aac": "audio/aac",
    "webm": "audio/webm",
}


def sniff_audio_format(head: bytes) -> str | None:
    """The container/codec named by the magic bytes at the start of `head`, or None."""
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
    if head.startswith(b"ID3"):
        return "mp3"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        # Frame sync: MPEG audio layers 1–3 have non-zero layer bits; ADTS AAC has layer 00.
        if head[1] & 0xF6 == 0xF0:
            return "aac"
        if head[1] & 0x06:
            return "mp3"
    return None


def wav_problem(head: bytes, total_size: int) -> str | None:
    """Why a WAV cannot be what its header says (`truncated_audio`, `empty_audio`), or None.

    Walks the RIFF chunks inside `head`; a `data` chunk that claims more bytes than the file has
    is truncated. Streaming writers put 0 or 0xFFFFFFFF there, which is accepted.
    """
    if total_size < 44 or len(head) < 12:
        return "truncated_audio"
    offset = 12
    seen_fmt = False
    while offset + 8 <= len(head):
        chunk_id = head[offset : offset + 4]
        (size,) = struct.unpack_from("<I", head, offset + 4)
        if chunk_id == b"fmt ":
            seen_fmt = True
        elif chunk_id == b"data":
            if not seen_fmt:
                return "truncated_audio"
            payload = total_size - (offset + 8)
            if payload <= 0:
                return "empty_audio"
            if size not in (0, 0xFFFFFFFF) and size > payload:
                return "truncated_audio"
            return None
        offset += 8 + size + (size & 1)
    # The data chunk lies beyond the bytes we kept (huge metadata chunks): leave it to the decoder.
    return None if offset + 8 > len(head) and offset < total_size else "truncated_audio"
