"""The two ways a pipeline stage can fail, which decide retry or immediate failure."""

from __future__ import annotations


class StageError(Exception):
    retryable: bool = False

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class TransientError(StageError):
    """S3 or analysis server unreachable, 5xx, timeouts: worth retrying with backoff."""

    retryable = True


class PermanentError(StageError):
    """Undecodable audio, analysis 4xx: retrying cannot help, fail at once with the code."""

    retryable = False
