"""The worker's client of the analysis server: NDJSON progress in, one result out.

Failures are classified where they are seen: connection errors, timeouts, 5xx and a refused
shared secret (401/403) are transient (retry with backoff); any other 4xx is the server telling
us the audio itself is unusable (fail at once).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol

import httpx

from yousync.core.errors import PermanentError, TransientError

NDJSON = "application/x-ndjson"


class Analyzer(Protocol):
    """What the pipeline needs of the analysis server (`AnalysisClient` is its HTTP client)."""

    def analyze(
        self, payload: dict[str, str], *, on_progress: Callable[[float, str], None]
    ) -> dict[str, Any]:
        """Analyse the stored object `payload["key"]`, reporting (fraction 0–1, detail); returns
        the result. Raises TransientError (retry) or PermanentError (the audio is unusable)."""
        ...


class AnalysisClient:
    def __init__(self, base_url: str, *, timeout: float, secret: str = "") -> None:
        # The shared secret goes on every call: the analysis server answers no one else.
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        self._client = httpx.Client(
            base_url=base_url, timeout=httpx.Timeout(timeout, connect=5.0), headers=headers
        )

    def close(self) -> None:
        self._client.close()

    def analyze(
        self, payload: dict[str, str], *, on_progress: Callable[[float, str], None]
    ) -> dict[str, Any]:
        try:
            with self._client.stream(
                "POST", "/analyze", json=payload, headers={"Accept": NDJSON}
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _http_error(response)
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    message = json.loads(line)
                    if "progress" in message:
                        on_progress(float(message["progress"]), str(message.get("stage", "")))
                    elif "result" in message:
                        return dict(message["result"])
                    elif "error" in message:
                        error = message["error"]
                        raise TransientError(
                            str(error.get("code", "analysis_failed")), str(error.get("message"))
                        )
        except httpx.TransportError as exc:
            raise TransientError(
                "analysis_unavailable", f"analysis server unreachable: {exc!r}"
            ) from exc
        except json.JSONDecodeError as exc:
            raise TransientError(
                "analysis_bad_response", f"unreadable progress line: {exc}"
            ) from exc
        raise TransientError("analysis_incomplete", "analysis stream ended without a result")


def _http_error(response: httpx.Response) -> Exception:
    try:
        body = response.json()
        code = str(body.get("code") or "analysis_rejected")
        detail = str(body.get("detail") or response.text[:200])
    except (ValueError, AttributeError):
        code, detail = "analysis_rejected", response.text[:200]
    if response.status_code >= 500 or response.status_code == 429:
        return TransientError("analysis_unavailable", f"{response.status_code}: {detail}")
    if response.status_code in (401, 403):
        # The deployment's fault (ANALYSIS_SHARED_SECRET differs), not the audio's: retried,
        # so jobs survive the few seconds a secret rotation leaves the two sides apart.
        return TransientError("analysis_unauthorized", f"{response.status_code}: {detail}")
    return PermanentError(code, detail)
