"""Talking to a running API the way a client does."""

from __future__ import annotations

from typing import Any

import httpx


def upload_accepted(
    base: str,
    token_id: str,
    content: bytes,
    *,
    name: str = "take.wav",
    mime: str = "audio/wav",
    timeout: float = 60,
) -> dict[str, Any]:
    """POST the file as the seed's curl does; the API must answer 202. Returns its body."""
    response = httpx.post(
        f"{base}/tokens/{token_id}/upload-audio",
        files={"file": (name, content, mime)},
        timeout=timeout,
    )
    assert response.status_code == 202, response.text
    return dict(response.json())
