"""Standard Webhooks signatures (https://www.standardwebhooks.com): what the main back end
checks on every completion callback, and a verifier a receiver can use as it is.

The signed content is `{webhook-id}.{webhook-timestamp}.{body}`; the signature header holds one
`v1,<base64 HMAC-SHA256>` per secret, space-separated, so a receiver still holding the old secret
during a rotation accepts the message. Secrets are written as the spec writes them:
`whsec_` + base64 of the key bytes. Why the standard and not our own scheme: receivers get it from
a library they already trust (standardwebhooks, svix), and the id + timestamp in the signed
content make replays of an old message detectable.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"
DEFAULT_TOLERANCE_SECONDS = 300.0


class WebhookVerificationError(Exception):
    """The message is not signed by the secret, or its timestamp is too old or too new."""


def secret_key(secret: str) -> bytes:
    """The key bytes of a `whsec_<base64>` secret (the prefix is optional, as in the spec's
    libraries). Raises ValueError on a secret that is not base64."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        # Padding optional, as the spec's own libraries read it.
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error as exc:
        raise ValueError("a webhook secret is 'whsec_' followed by base64") from exc
    if not key:
        raise ValueError("a webhook secret must not be empty")
    return key


def _signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    content = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, content, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def sign(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: one `v1,<signature>` per secret, space-separated."""
    return " ".join(
        f"{SIGNATURE_VERSION},{_signature(secret_key(secret), msg_id, timestamp, body)}"
        for secret in secrets
    )


def headers(
    secrets: Sequence[str], msg_id: str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    """Every header of one attempt. The timestamp is the attempt's, not the job end's: a
    receiver's tolerance window applies to each retry as it arrives."""
    stamp = int(time.time()) if timestamp is None else timestamp
    sent = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(stamp),
        "content-type": "application/json",
    }
    if secrets:
        sent["webhook-signature"] = sign(secrets, msg_id, stamp, body)
    return sent


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> None:
    """Raise WebhookVerificationError unless `body` with these headers was signed with
    `secret` within `tolerance_seconds` of `now`. Header names are matched case-insensitively
    (HTTP frameworks hand them over in any case)."""
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get("webhook-id")
    stamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not msg_id or not stamp or not signatures:
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or signature")
    try:
        timestamp = int(stamp)
    except ValueError as exc:
        raise WebhookVerificationError("webhook-timestamp is not a number") from exc
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_seconds:
        raise WebhookVerificationError("webhook-timestamp outside the tolerance")
    expected = _signature(secret_key(secret), msg_id, timestamp, body)
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version == SIGNATURE_VERSION and hmac.compare_digest(value, expected):
            return
    raise WebhookVerificationError("no signature matches")
