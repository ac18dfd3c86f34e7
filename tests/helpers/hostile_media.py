"""Crafted uploads that once got through: each reproduces a finding of an attack on the stack.

Made with ffmpeg (the tool the attacker would use too) plus a few patched header bytes, never by
the code under test.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

# An ID3v2.4 tag of zero bytes: enough for a sniffer that trusts "ID3" to say MP3.
EMPTY_ID3 = b"ID3\x04\x00\x00\x00\x00\x00\x00"


def id3_padding(size: int) -> bytes:
    """An ID3v2.4 tag of `size` bytes of padding (syncsafe size): larger than the API's
    4 KB sniffing window, so only a look behind it on disk can tell what follows."""
    syncsafe = bytes((size >> shift) & 0x7F for shift in (21, 14, 7, 0))
    return b"ID3\x04\x00\x00" + syncsafe + b"\x00" * size


def concat_script(target: str, *, tag: bytes = EMPTY_ID3) -> bytes:
    """An ffconcat script behind an ID3 tag: auto-detected, ffmpeg decodes `target` (a
    relative name is "safe" for the concat demuxer: another job's spool file next to it)."""
    return tag + f"ffconcat version 1.0\nfile {target}\n".encode()


def hls_playlist(target: str, *, tag: bytes = EMPTY_ID3) -> bytes:
    """An HLS playlist behind an ID3 tag naming a file of the host by absolute path."""
    return (
        tag
        + (
            f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nfile://{target}\n#EXT-X-ENDLIST\n"
        ).encode()
    )


def silent_flac(path: Path, *, seconds: float, channels: int = 1, rate: int = 48000) -> Path:
    """Digital silence as FLAC with the largest frames ffmpeg writes: minutes of 8 channels in
    a few kilobytes, as in the attack."""
    layout = {1: "mono", 2: "stereo", 8: "7.1"}[channels]
    source = ["-f", "lavfi", "-i", f"anullsrc=r={rate}:cl={layout}", "-t", str(seconds)]
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", *source, "-c:a", "flac", "-frame_size", "65535", str(path)],
        check=True,
        timeout=120,
    )
    return path


def declare_flac_length(data: bytes, *, seconds: float) -> bytes:
    """`data` with its STREAMINFO's total-sample count rewritten to `seconds` of audio: the
    header lies, the frames stay."""
    patched = bytearray(data)
    assert patched[:4] == b"fLaC" and patched[4] & 0x7F == 0, "STREAMINFO comes first"
    fields = int.from_bytes(patched[18:26], "big")
    rate = fields >> 44
    fields = (fields & ~((1 << 36) - 1)) | round(seconds * rate)
    patched[18:26] = fields.to_bytes(8, "big")
    return bytes(patched)


def lying_flac(path: Path, *, declared: float, actual: float, channels: int = 8) -> bytes:
    """A FLAC holding `actual` seconds of `channels` channels that declares `declared`."""
    return declare_flac_length(
        silent_flac(path, seconds=actual, channels=channels).read_bytes(), seconds=declared
    )


def piped_flac(seconds: float) -> bytes:
    """Silence as FLAC written to a pipe: ffmpeg cannot go back to fill in its length, so
    nothing but decoding tells how long it is."""
    silence = ["-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", str(seconds)]
    return subprocess.run(
        ["ffmpeg", "-v", "error", *silence, "-c:a", "flac", "-f", "flac", "pipe:1"],
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout


def _ebml(element_id: bytes, payload: bytes) -> bytes:
    size = len(payload)
    length = next(n for n in range(1, 9) if size < (1 << (7 * n)) - 1)
    return element_id + ((1 << (7 * length)) | size).to_bytes(length, "big") + payload


def _uint(element_id: bytes, value: int) -> bytes:
    return _ebml(element_id, value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def webm_all_discarded(blocks: int) -> bytes:
    """WebM/Opus whose every 120 ms block carries DiscardPadding of its whole length: the
    decoder works through all of it and outputs nothing, so no output cap ever trips. Written
    by hand (no tool writes such a file on purpose); ffprobe accepts it as Opus in WebM."""
    header = _ebml(
        b"\x1a\x45\xdf\xa3",
        _uint(b"\x42\x86", 1)
        + _uint(b"\x42\xf7", 1)
        + _uint(b"\x42\xf2", 4)
        + _uint(b"\x42\xf3", 8)
        + _ebml(b"\x42\x82", b"webm")
        + _uint(b"\x42\x87", 4)
        + _uint(b"\x42\x85", 2),
    )
    info = _ebml(b"\x15\x49\xa9\x66", _uint(b"\x2a\xd7\xb1", 1_000_000))
    opus_head = b"OpusHead\x01\x01" + (0).to_bytes(2, "little") + (48000).to_bytes(4, "little")
    opus_head += b"\x00\x00\x00"
    audio = _ebml(b"\xe1", _ebml(b"\xb5", b"\x40\xe7\x70\x00\x00\x00\x00\x00") + _uint(b"\x9f", 1))
    track = _ebml(
        b"\xae",
        _uint(b"\xd7", 1)
        + _uint(b"\x73\xc5", 1)
        + _uint(b"\x83", 2)
        + _ebml(b"\x86", b"A_OPUS")
        + _ebml(b"\x63\xa2", opus_head)
        + audio,
    )
    body = bytearray(header + b"\x18\x53\x80\x67\x01\xff\xff\xff\xff\xff\xff\xff")
    body += info + _ebml(b"\x16\x54\xae\x6b", track)
    packet = bytes([0xFB, 6])  # six lost 20 ms CELT frames: the decoder conceals them
    per_cluster, written, cluster_ms = 250, 0, 0
    while written < blocks:
        count = min(per_cluster, blocks - written)
        cluster = bytearray(_uint(b"\xe7", cluster_ms))
        for index in range(count):
            block = _ebml(b"\xa1", b"\x81" + (index * 120).to_bytes(2, "big") + b"\x00" + packet)
            cluster += _ebml(b"\xa0", block + _uint(b"\x75\xa2", 120_000_000))
        body += _ebml(b"\x1f\x43\xb6\x75", bytes(cluster))
        cluster_ms += count * 120
        written += count
    return bytes(body)
