"""The one exception of the package; each process maps its `code` to its own error types."""

from __future__ import annotations

# Codes a caller may see. All are the audio's fault (never worth a retry) except
# `decoder_unavailable`, which is the host's (ffmpeg missing).
UNSUPPORTED = "unsupported_audio_format"
UNDECODABLE = "undecodable_audio"
TOO_LONG = "audio_too_long"
LONGER_THAN_DECLARED = "audio_longer_than_declared"
TRUNCATED = "truncated_audio"
EMPTY = "empty_audio"
TIMEOUT = "decode_timeout"
DECODER_UNAVAILABLE = "decoder_unavailable"

# The refusals of the audio itself: a job failing with one of these keeps nothing it stored.
REFUSALS = frozenset(
    {UNSUPPORTED, UNDECODABLE, TOO_LONG, LONGER_THAN_DECLARED, TRUNCATED, EMPTY, TIMEOUT}
)


class MediaError(Exception):
    """A refusal of the input, with a stable `code` and a message fit for the user (no paths)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @property
    def retryable(self) -> bool:
        return self.code == DECODER_UNAVAILABLE
