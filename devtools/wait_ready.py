"""Wait for the local stack to be ready, then print where everything is (`make dev`,
`make prod-local`).

Run by the Procfiles as the `ready` process: polls the API's /readyz until it answers 200,
prints the URLs block, then sleeps, because honcho stops the whole stack when any process exits.
If /readyz stays red, it prints the last answer and keeps polling slowly, so the logs stay
readable. With API_KEYS set, /readyz needs a key like every endpoint but /healthz: the probe
sends the first one. `make prod-local` points it at the proxy (READY_BASE_URL) and Flower's path
there (READY_FLOWER_URL).
"""

from __future__ import annotations

import os
import signal
import sys
import time
import urllib.error
import urllib.request
from types import FrameType
from urllib.parse import urlsplit, urlunsplit

POLL_SECONDS = 0.5
SLOW_POLL_SECONDS = 5.0


def env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def first_api_key() -> str:
    keys = [key.strip() for key in os.environ.get("API_KEYS", "").split(",") if key.strip()]
    return keys[0] if keys else ""


def probe(url: str, api_key: str = "") -> tuple[int | None, str]:
    """Status and body of GET url; (None, reason) when nothing answers."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        request = urllib.request.Request(url, headers=headers)
        with urllib.request.urlopen(request, timeout=2.0) as resp:
            return resp.status, resp.read(4096).decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(4096).decode(errors="replace")
    except (OSError, ValueError) as exc:
        return None, str(exc)


def without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def browsable(host: str) -> str:
    """A host a browser can open: wildcard binds are reached on loopback."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


def banner(api: str) -> str:
    analysis = env("ANALYSIS_SERVER_URL", f"http://127.0.0.1:{env('ANALYSIS_PORT', '8001')}")
    flower = env("READY_FLOWER_URL", f"http://127.0.0.1:{env('FLOWER_PORT', '5555')}")
    flower_user = env("FLOWER_BASIC_AUTH", "").split(":", 1)[0] or "(none)"
    s3 = env("S3_ENDPOINT_URL", f"http://127.0.0.1:{env('S3_PORT', '9000')}")
    redis_url = without_password(env("REDIS_URL", "redis://127.0.0.1:6379/0"))
    # The seed's curl example says localhost; keep it recognisable.
    curl_base = api.replace("//127.0.0.1:", "//localhost:")
    upload = f"{curl_base}/tokens/test123/upload-audio"
    # With API_KEYS set, uploads need the header and the other URLs the answer's stream_token.
    keyed = bool(os.environ.get("API_KEYS"))
    secrets_file = os.environ.get("READY_SECRETS_FILE")
    key_hint = f"<API_KEYS in {secrets_file}>" if secrets_file else "<one of API_KEYS>"
    auth = f' -H "Authorization: Bearer {key_hint}"' if keyed else ""
    token = "?token=<stream_token>" if keyed else ""
    wait = "&wait=30" if keyed else "?wait=30"
    rule = "=" * 78
    return "\n".join(
        [
            rule,
            env("READY_TITLE", "YouSync local stack is ready") + " (/readyz is green)",
            f"  API              {api}",
            f"  API docs         {api}/docs",
            f"  progress page    {api}/",
            f"  analysis server  {analysis}",
            f"  Flower           {flower}  (user {flower_user!r}, password in FLOWER_BASIC_AUTH)",
            f"  metrics          {api}/metrics",
            f"  S3 (moto)        {s3}  bucket {env('S3_BUCKET', 'yousync-audio')!r}",
            f"  Redis            {redis_url}",
            "",
            "  Try it:",
            f'    curl -X POST "{upload}"{auth} -F "file=@audio.wav"',
            f'    curl -N "{curl_base}/tokens/analysis-progress/<job_id>{token}"',
            f'    curl "{curl_base}/tokens/analysis-result/<job_id>{token}{wait}"',
            "  Ctrl-C stops everything.",
            rule,
        ]
    )


def main() -> int:
    def on_signal(signum: int, _frame: FrameType | None) -> None:
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    host = browsable(env("API_HOST", "127.0.0.1"))
    api = env("READY_BASE_URL", f"http://{host}:{env('API_PORT', '8000')}").rstrip("/")
    readyz = f"{api}/readyz"
    timeout = float(env("READY_TIMEOUT_SECONDS", "120"))
    key = first_api_key()

    deadline = time.monotonic() + timeout
    status, body = probe(readyz, key)
    while status != 200 and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
        status, body = probe(readyz, key)

    if status != 200:
        print(
            f"ready: {readyz} not green after {timeout:.0f}s; last answer "
            f"({status if status is not None else 'no connection'}):\n{body}\n"
            "ready: still polling every 5 s; read the other processes' logs above",
            flush=True,
        )
        while status != 200:
            time.sleep(SLOW_POLL_SECONDS)
            status, body = probe(readyz, key)

    print(banner(api), flush=True)
    while True:  # honcho stops the whole stack when any process exits
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
