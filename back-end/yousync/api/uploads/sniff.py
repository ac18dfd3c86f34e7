"""Recognise audio from its first bytes, and catch a truncated WAV from its header alone.

Why in the API: a text file named `.wav` must get 415 at once, not a job that fails a minute
later. Formats are told by magic bytes, never by file name or the client's Content-Type, with
the same rules the worker applies (`media_guard.formats`): an ID3 tag must be followed by MPEG
audio, so a playlist or concat script behind one is refused here already. Compressed formats
are validated for real by the worker's guarded decode.
"""

from __future__ import annotations

import struct

from media_guard.formats import (
    CONTENT_TYPES,
    SNIFF_BYTES,
    bytes_needed_to_sniff,
    sniff_audio_format,
)

__all__ = [
    "CONTENT_TYPES",
    "HEAD_BYTES",
    "SNIFF_BYTES",
    "bytes_needed_to_sniff",
    "sniff_audio_format",
    "wav_problem",
]

HEAD_BYTES = 4096


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
