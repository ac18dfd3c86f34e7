"""Our Standard Webhooks signatures, checked by the spec's reference library (standardwebhooks)
as a receiver would check them, and our verifier against tampering, age and rotation."""

from __future__ import annotations

import base64
import json
import time

import pytest
import standardwebhooks

from yousync.core import webhooks

SECRET = "whsec_" + base64.b64encode(b"a key of thirty-two bytes, exact").decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"the secret being rotated out....").decode()
BODY = json.dumps({"job_id": "j1", "status": "completed", "progress": 100}).encode()


def test_signature_when_checked_by_the_reference_library_then_it_verifies() -> None:
    sent = webhooks.headers([SECRET], "j1.1", BODY)
    assert standardwebhooks.Webhook(SECRET).verify(BODY, sent) == json.loads(BODY)


def test_signature_when_two_secrets_then_a_receiver_holding_either_verifies() -> None:
    sent = webhooks.headers([SECRET, OLD_SECRET], "j1.1", BODY)
    assert len(sent["webhook-signature"].split()) == 2
    for secret in (SECRET, OLD_SECRET):
        standardwebhooks.Webhook(secret).verify(BODY, sent)
        webhooks.verify(secret, sent, BODY)


def test_verify_when_the_reference_library_signed_then_it_passes() -> None:
    stamp = int(time.time())
    signature = standardwebhooks.Webhook(SECRET).sign(
        "msg_1", standardwebhooks.webhooks.datetime.fromtimestamp(stamp), BODY.decode()
    )
    sent = {"Webhook-Id": "msg_1", "Webhook-Timestamp": str(stamp), "Webhook-Signature": signature}
    webhooks.verify(SECRET, sent, BODY)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda headers, body: (headers, body.replace(b"completed", b"failed")),
        lambda headers, body: ({**headers, "webhook-id": "j1.2"}, body),
        lambda headers, body: (
            {**headers, "webhook-timestamp": str(int(headers["webhook-timestamp"]) + 1)},
            body,
        ),
        lambda headers, body: (
            {k: v for k, v in headers.items() if k != "webhook-signature"},
            body,
        ),
    ],
    ids=["body", "id", "timestamp", "no-signature"],
)
def test_verify_when_anything_signed_was_changed_then_it_fails(tamper) -> None:  # type: ignore[no-untyped-def]
    headers, body = tamper(webhooks.headers([SECRET], "j1.1", BODY), BODY)
    with pytest.raises(webhooks.WebhookVerificationError):
        webhooks.verify(SECRET, headers, body)
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(SECRET).verify(body, headers)


def test_verify_when_the_timestamp_is_outside_the_tolerance_then_it_fails() -> None:
    sent = webhooks.headers([SECRET], "j1.1", BODY, timestamp=int(time.time()) - 301)
    with pytest.raises(webhooks.WebhookVerificationError, match="tolerance"):
        webhooks.verify(SECRET, sent, BODY)
    webhooks.verify(SECRET, sent, BODY, tolerance_seconds=310)


def test_verify_when_signed_with_another_secret_then_it_fails() -> None:
    sent = webhooks.headers([OLD_SECRET], "j1.1", BODY)
    with pytest.raises(webhooks.WebhookVerificationError, match="no signature"):
        webhooks.verify(SECRET, sent, BODY)


def test_secret_when_not_base64_then_refused_and_unpadded_base64_is_read() -> None:
    with pytest.raises(ValueError, match="base64"):
        webhooks.secret_key("whsec_not*base64")
    unpadded = "whsec_" + base64.b64encode(b"12345").decode().rstrip("=")
    assert webhooks.secret_key(unpadded) == b"12345"


def test_headers_when_no_secret_is_set_then_no_signature_header() -> None:
    assert "webhook-signature" not in webhooks.headers([], "j1.1", BODY)
