"""Preparation stage: decode with pydub (which is the validation: fake audio fails here) and
store in AUDIO_STORE_FORMAT.

Decoding loads the whole file as PCM; MAX_UPLOAD_MB bounds that (a 100 MB upload decodes to at
most a few hundred MB for compressed input), which is the memory bound of one worker process.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from pydub import AudioSegment
from pydub.exceptions import CouldntDecodeError

from services.errors import PermanentError
from services.sniff import CONTENT_TYPES

# Sniffed format -> the name ffmpeg/pydub want.
_DECODER_FORMAT = {
    "m4a": "mp4",
    "aac": "aac",
    "webm": "webm",
    "ogg": "ogg",
    "mp3": "mp3",
    "flac": "flac",
    "wav": "wav",
}
# AUDIO_STORE_FORMAT -> (extension, pydub export arguments, content type)
_EXPORT: dict[str, tuple[str, dict[str, object], str]] = {
    "flac": ("flac", {"format": "flac"}, "audio/flac"),
    "mp3": ("mp3", {"format": "mp3", "bitrate": "128k"}, "audio/mpeg"),
    "ogg": ("ogg", {"format": "ogg", "codec": "libopus", "bitrate": "64k"}, "audio/ogg"),
}


@dataclass(frozen=True)
class PreparedAudio:
    path: Path
    extension: str
    content_type: str
    size: int
    duration_ms: int
    sample_rate: int
    channels: int


def prepare(source: Path, *, source_format: str, store_format: str, dest: Path) -> PreparedAudio:
    """Decode `source`, then write the stored form to `dest` (an extension is appended)."""
    try:
        # An open handle, not a path: pydub leaves a path it opened itself unclosed.
        with source.open("rb") as handle:
            segment = AudioSegment.from_file(handle, format=_DECODER_FORMAT.get(source_format))
    except (CouldntDecodeError, IndexError, ValueError, EOFError) as exc:
        raise PermanentError(
            "undecodable_audio",
            f"The file could not be decoded as audio: {exc}".splitlines()[0][:300],
        ) from exc
    if len(segment) == 0:
        raise PermanentError("empty_audio", "The file contains no audio")
    if store_format == "original":
        extension, content_type = source_format, CONTENT_TYPES[source_format]
        target = dest.with_name(f"{dest.name}.{extension}")
        shutil.copyfile(source, target)
    else:
        extension, export_args, content_type = _EXPORT[store_format]
        target = dest.with_name(f"{dest.name}.{extension}")
        segment.export(target, **export_args)  # type: ignore[arg-type]
    return PreparedAudio(
        path=target,
        extension=extension,
        content_type=content_type,
        size=target.stat().st_size,
        duration_ms=len(segment),
        sample_rate=segment.frame_rate,
        channels=segment.channels,
    )
