"""devtools/wait_ready.py, the `ready` process of `make dev` and `make prod-local`."""

from __future__ import annotations

import contextlib
import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools import stack

ROOT = Path(__file__).resolve().parents[2]
KEY = "ys_test_key"


class _KeyedReadyz(http.server.BaseHTTPRequestHandler):
    """/readyz as the API answers it with API_KEYS set: 401 without a key, 200 with one."""

    def do_GET(self) -> None:
        ok = self.path == "/readyz" and self.headers.get("Authorization") == f"Bearer {KEY}"
        body = b'{"status": "ready"}' if ok else b'{"code": "unauthorized"}'
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def keyed_api() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _KeyedReadyz)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def run_ready(base_url: str, api_keys: str, seconds: float, tmp_path: Path, until: str) -> str:
    """Run the real script until it prints `until` (or for `seconds` plus a margin) and return
    what it printed."""
    env = {
        "PATH": "/usr/bin:/bin",
        "READY_BASE_URL": base_url,
        "READY_TIMEOUT_SECONDS": str(seconds),
        "API_KEYS": api_keys,
        "READY_SECRETS_FILE": "/srv/yousync/secrets.env",
    }
    log = tmp_path / "ready.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "devtools" / "wait_ready.py")],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        with contextlib.suppress(TimeoutError):
            stack.wait_until(
                lambda: until in log.read_text(), timeout=seconds + 5, what=repr(until)
            )
    finally:
        proc.terminate()
        proc.wait(10)
    return log.read_text()


def test_ready_when_api_keys_are_set_then_probes_with_the_first_key_and_prints_the_banner(
    keyed_api: str, tmp_path: Path
) -> None:
    out = run_ready(keyed_api, f" {KEY} ,other", 2.0, tmp_path, until="Ctrl-C stops")
    assert "is ready (/readyz is green)" in out, out
    # The curl examples point at where the key is, never print it.
    assert "Bearer <API_KEYS in /srv/yousync/secrets.env>" in out and KEY not in out
    assert f"{keyed_api}/metrics" in out


def test_ready_when_the_key_is_wrong_then_reports_the_401_instead_of_a_banner(
    keyed_api: str, tmp_path: Path
) -> None:
    out = run_ready(keyed_api, "not-the-key", 1.0, tmp_path, until="still polling")
    assert "is ready" not in out
    assert "not green after 1s; last answer (401)" in out, out


def test_ready_when_nothing_listens_then_says_no_connection(tmp_path: Path) -> None:
    out = run_ready(
        f"http://127.0.0.1:{stack.free_port()}", "", 1.0, tmp_path, until="still polling"
    )
    assert "last answer (no connection)" in out, out
