"""API keys and per-job stream tokens.

When API_KEYS is set, requests need `Authorization: Bearer <key>`. An EventSource cannot send
headers, so the upload answer also carries a `stream_token`: an HMAC over the job id and an
expiry, accepted as `?token=` on that job's SSE and result URLs only. A token for job A never
opens job B, and it expires (STREAM_TOKEN_TTL_SECONDS). Keys are compared in constant time and
never logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time


class Unauthorized(Exception):
    """401: no or wrong credentials."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class Forbidden(Unauthorized):
    """403: a stream token that does not open this job (other job, expired, forged)."""


def _signature(secret: str, job_id: str, expires: int) -> str:
    digest = hmac.new(secret.encode(), f"{job_id}.{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:24]).decode().rstrip("=")


def issue_stream_token(
    secret: str, job_id: str, *, ttl_seconds: int, now: float | None = None
) -> str:
    expires = int((now if now is not None else time.time()) + ttl_seconds)
    return f"{expires}.{_signature(secret, job_id, expires)}"


def check_stream_token(secret: str, job_id: str, token: str, *, now: float | None = None) -> None:
    expires_text, _, signature = token.partition(".")
    if not expires_text.isdigit() or not signature:
        raise Forbidden("invalid_stream_token", "The stream token is malformed")
    if not hmac.compare_digest(signature, _signature(secret, job_id, int(expires_text))):
        raise Forbidden("invalid_stream_token", "The stream token is not for this job")
    if int(expires_text) < (now if now is not None else time.time()):
        raise Forbidden("expired_stream_token", "The stream token has expired")


def check_api_key(configured: frozenset[str], authorization: str | None) -> None:
    if not authorization:
        raise Unauthorized("unauthorized", "Send Authorization: Bearer <API key>")
    scheme, _, presented = authorization.partition(" ")
    if scheme.lower() != "bearer" or not presented:
        raise Unauthorized("unauthorized", "Send Authorization: Bearer <API key>")
    if not any(hmac.compare_digest(presented.strip(), key) for key in configured):
        raise Unauthorized("invalid_api_key", "The API key is not valid")
