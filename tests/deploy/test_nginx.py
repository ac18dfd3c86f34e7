"""The reverse proxy (deploy/nginx) as rendered, run by the real nginx in front of the real API
(two processes) and Flower: the SSE recipe, uploads streamed through with the API's own 413,
the client address passed on and believed only from the proxy, logs without query strings,
header limits and timeouts, JSON for nginx's own errors, upstream keep-alive."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from deploy.render import (
    DEPLOY_DIR,
    RenderError,
    Topology,
    file_too_large_body,
    nginx_string,
    render_text,
    render_tree,
)
from devtools import stack
from devtools.connections import children, peer_ports
from tests.conftest import PROXY_ADDR, PROXY_HEADER_TIMEOUT_SECONDS, NginxProxy
from tests.helpers import sse
from tests.helpers.audio import wav_bytes
from tests.helpers.jobs import create_job, sync_store
from tests.helpers.multipart import multipart
from tests.helpers.wait import wait_until
from yousync.core.config import Settings

MB = 1024 * 1024
CLIENT_ADDR = "127.0.0.3"


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict[str, object]:
        return dict(json.loads(self.body))


def read_response(sock: socket.socket) -> RawResponse:
    """One HTTP/1.1 response read off a raw socket (Content-Length framed, or up to EOF)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a full header: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "-1"))
    while length < 0 or len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return RawResponse(int(status_line.split()[1]), headers, body)


def connect(url: str, timeout: float = 10.0) -> socket.socket:
    parsed = httpx.URL(url)
    return socket.create_connection((parsed.host, parsed.port), timeout=timeout)


def upload_head(token_id: str, url: str, content_type: str, length: int) -> bytes:
    return (
        f"POST /tokens/{token_id}/upload-audio HTTP/1.1\r\nHost: {httpx.URL(url).netloc.decode()}"
        f"\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def log_line_with(path: Path, marker: str) -> str:
    """The log line naming `marker`, once it is written (nginx and the API write a request's
    line when it ends)."""

    def find() -> str | None:
        if not path.exists():
            return None
        return next((line for line in path.read_text().splitlines() if marker in line), None)

    line = wait_until(find, timeout=10, what=f"a line with {marker} in {path.name}")
    assert line is not None
    return line


# --- the config itself --------------------------------------------------------------------


def render_nginx(out: Path, **fields: object) -> Path:
    topology = Topology(run_dir=out, nginx_log_dir=out / "nginx", **fields)  # type: ignore[arg-type]
    render_tree(out / "conf", topology.values(Settings()), DEPLOY_DIR / "nginx")
    (out / "nginx").mkdir(exist_ok=True)
    return out / "conf"


def nginx_t(prefix: Path, conf: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [stack.nginx_binary(), "-t", "-p", str(prefix), "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_rendered_local_config_passes_nginx_t(tmp_path: Path) -> None:
    conf = render_nginx(tmp_path)

    checked = nginx_t(tmp_path / "nginx", conf / "nginx-local.conf")

    assert checked.returncode == 0, checked.stderr
    assert "test is successful" in checked.stderr


def test_rendered_site_loads_inside_debians_own_nginx_conf(tmp_path: Path) -> None:
    """As /etc/nginx/conf.d/yousync.conf: nothing in it collides with what Debian's http{}
    already sets (a duplicate `gzip` or `access_log` format there would fail the host's nginx).
    Only Debian's system paths are moved into tmp_path, and its default site left out (the
    deploy replaces it: both are default_server on port 80)."""
    stock = Path("/etc/nginx/nginx.conf")
    if not stock.exists():
        pytest.skip("Debian's nginx package is not installed (scripts/ensure_system_deps.sh)")
    conf = render_nginx(tmp_path)
    temp_paths = "".join(
        f"{kind}_temp_path {tmp_path / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    text = (
        stock.read_text()
        .replace("/var/log/nginx/", f"{tmp_path}/")
        .replace("/run/nginx.pid", f"{tmp_path}/nginx.pid")
        .replace("include /etc/nginx/conf.d/*.conf;", f"{temp_paths}include {conf}/yousync.conf;")
        .replace("include /etc/nginx/sites-enabled/*;", "")
    )
    (tmp_path / "debian.conf").write_text(text)

    checked = nginx_t(tmp_path, tmp_path / "debian.conf")

    assert checked.returncode == 0, checked.stderr


def test_proxy_413_body_is_rendered_from_the_apis_own_rejection() -> None:
    settings = Settings(max_upload_mb=8)
    body = file_too_large_body(settings)

    assert json.loads(body) == {
        "detail": "The file is larger than the 8 MB limit",
        "code": "file_too_large",
    }
    site = render_text(
        (DEPLOY_DIR / "nginx" / "yousync.conf.in").read_text(), Topology().values(settings)
    )
    assert f"return 413 {nginx_string(body)};" in site
    assert "client_max_body_size 9m;" in site


def test_nginx_string_escapes_quotes_and_backslashes_and_refuses_a_dollar() -> None:
    assert nginx_string('it\'s \\ "x"') == "'it\\'s \\\\ \"x\"'"
    with pytest.raises(RenderError):
        nginx_string("costs $5")


# --- through the running proxy --------------------------------------------------------------


def test_sse_through_proxy_when_a_job_progresses_then_its_event_arrives_while_the_stream_is_open(
    nginx_proxy: NginxProxy, redis_client: redis.Redis, redis_url: str, token_id: str
) -> None:
    job_id = create_job(redis_url, token_id)
    url = f"{nginx_proxy.url}/tokens/analysis-progress/{job_id}"
    headers = {"Accept": "text/event-stream", "Accept-Encoding": "gzip"}
    with httpx.Client(timeout=10) as client, client.stream("GET", url, headers=headers) as answer:
        assert answer.status_code == 200
        assert "content-encoding" not in answer.headers, "an event stream is never compressed"
        events = sse.parse_lines(answer.iter_lines())
        next(events)  # the job as it stands: the client is registered for what follows

        sync_store(redis_url).update(
            job_id, token_id, status="processing", progress=40, stage="analyzing", message="live"
        )

        # Read before the job ends, the stream still open: a buffering proxy would hold it
        # back until its buffer filled or the stream ended (a read timeout here).
        live = next(events).json
    assert (live["status"], live["message"]) == ("processing", "live")


def files_open(pids: list[int], under: str) -> list[str]:
    """Files whose path contains `under` that the processes hold open. How a test sees nginx
    spool a body or a response to disk: nginx unlinks its temp files as soon as it creates
    them, so only the descriptor ("… (deleted)") is left to see."""
    found = []
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if under in (target := os.readlink(fd)):
                    found.append(target)
    return found


def nginx_pids(proxy: NginxProxy) -> list[int]:
    return [proxy.proc.pid, *children(proxy.proc.pid)]


def test_upload_through_proxy_streams_into_the_api_before_the_body_ends_and_the_job_completes(
    nginx_proxy: NginxProxy,
    worker_service: stack.Proc,
    analysis_service: stack.Proc,
    redis_client: redis.Redis,
    spool_dir: Path,
    token_id: str,
) -> None:
    body, content_type = multipart(("file", "take.wav", wav_bytes(40.0)))
    assert len(body) > MB
    api_pids = children(nginx_proxy.api.pid)
    with connect(nginx_proxy.url) as sock:
        sock.sendall(upload_head(token_id, nginx_proxy.url, content_type, len(body)))
        sock.sendall(body[: len(body) // 2])

        # Half the body sent and the client pausing: the API is already writing it to its
        # spool, and nginx holds no copy of it on disk.
        wait_until(
            lambda: files_open(api_pids, str(spool_dir)),
            timeout=10,
            what="an API process writing the upload while the client is still sending it",
        )
        assert files_open(nginx_pids(nginx_proxy), "/client_body_temp/") == []
        assert list((nginx_proxy.run_dir / "client_body_temp").iterdir()) == []

        sock.sendall(body[len(body) // 2 :])
        accepted = read_response(sock)
    assert accepted.status == 202, accepted.body
    progress_url = accepted.json["progress_url"]

    snapshots = [event.json for event in sse.stream(f"{nginx_proxy.url}{progress_url}")]
    assert snapshots[-1]["status"] == "completed"


def test_upload_when_content_length_is_past_the_proxy_limit_then_413_json_before_the_body(
    nginx_proxy: NginxProxy, token_id: str
) -> None:
    _, content_type = multipart(("file", "take.wav", b""))
    with connect(nginx_proxy.url) as sock:
        # Only the headers: nginx must answer without waiting for 20 MB that never come.
        sock.sendall(upload_head(token_id, nginx_proxy.url, content_type, 20 * MB))
        refused = read_response(sock)

    assert refused.status == 413
    assert refused.headers["content-type"] == "application/json"
    assert refused.body.decode() == file_too_large_body(Settings(max_upload_mb=8))


def test_upload_when_body_is_between_the_api_and_the_proxy_limits_then_the_apis_own_413(
    nginx_proxy: NginxProxy, token_id: str
) -> None:
    # MAX_UPLOAD_MB is 8 (stack_env), the proxy admits 9m: this one gets through to the API.
    body, content_type = multipart(("file", "take.wav", wav_bytes(1.0) + bytes(8 * MB)))
    answer = httpx.post(
        f"{nginx_proxy.url}/tokens/{token_id}/upload-audio",
        content=body,
        headers={"Content-Type": content_type},
        timeout=30,
    )

    assert answer.status_code == 413
    assert answer.headers["content-type"] == "application/json"
    assert answer.text == file_too_large_body(Settings(max_upload_mb=8))
    api_line = log_line_with(nginx_proxy.api.log_path, f"/tokens/{token_id}/upload-audio")
    assert "status=413" in api_line, "the API answered it, not nginx"


def test_request_when_the_api_is_down_then_502_json_with_retry_after(
    workdir: Path, backend_env: dict[str, str]
) -> None:
    nothing_there = stack.free_port()
    proxy = stack.proxy_proc(
        workdir, backend_env, api_port=nothing_there, flower_port=nothing_there
    ).start()
    try:
        answer = httpx.get(f"http://127.0.0.1:{proxy.name.split(':')[1]}/healthz", timeout=10)
    finally:
        proxy.stop()

    assert answer.status_code == 502
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["retry-after"] == "5"
    assert answer.json()["code"] == "upstream_unavailable"


def raw_exchange(url: str, request: bytes) -> RawResponse:
    with connect(url) as sock:
        sock.sendall(request)
        return read_response(sock)


def test_request_when_a_header_is_too_large_then_431_json(nginx_proxy: NginxProxy) -> None:
    answer = raw_exchange(
        nginx_proxy.url,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (9 * 1024) + b"\r\n\r\n",
    )

    assert answer.status == 431
    assert answer.headers["content-type"] == "application/json"
    assert answer.json["code"] == "headers_too_large"


def test_request_when_the_request_line_is_too_long_then_414_json(
    nginx_proxy: NginxProxy,
) -> None:
    answer = raw_exchange(
        nginx_proxy.url, b"GET /healthz?" + b"a" * (9 * 1024) + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    )

    assert answer.status == 414
    assert answer.headers["content-type"] == "application/json"
    assert answer.json["code"] == "uri_too_long"


@pytest.mark.parametrize(
    "request_bytes",
    [b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", b"\x16\x03\x01 hello\r\n\r\n"],
    ids=["bad-header-line", "no-request-line"],
)
def test_request_when_malformed_then_400_json(
    nginx_proxy: NginxProxy, request_bytes: bytes
) -> None:
    answer = raw_exchange(nginx_proxy.url, request_bytes)

    assert answer.status == 400
    assert answer.headers["content-type"] == "application/json"
    assert answer.json["code"] == "bad_request"


def test_client_that_never_finishes_its_headers_is_disconnected(
    nginx_proxy: NginxProxy,
) -> None:
    with connect(nginx_proxy.url, timeout=PROXY_HEADER_TIMEOUT_SECONDS + 8) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # …and never the blank line

        # EOF, not our socket's timeout: nginx hung up (client_header_timeout).
        assert sock.recv(1024) == b""


def test_access_log_keeps_the_path_and_drops_the_query_string(
    nginx_proxy: NginxProxy,
) -> None:
    path = f"/tokens/analysis-result/{uuid.uuid4()}"

    httpx.get(f"{nginx_proxy.url}{path}?token=SECRET-{path[-8:]}&wait=0", timeout=10)

    line = log_line_with(nginx_proxy.access_log, path)
    assert f"GET {path} HTTP/1.1" in line
    assert "SECRET" not in nginx_proxy.access_log.read_text()
    # Debian's http-level access log (combined format, with the query) gets nothing of it.
    http_level = nginx_proxy.run_dir / "access.log"
    assert "SECRET" not in (http_level.read_text() if http_level.exists() else "")


def api_client_of(api: stack.Proc, path: str) -> str:
    match = re.search(r"\bclient=(\S+)", log_line_with(api.log_path, f"path={path} "))
    assert match, "the API logs the client address of every request"
    return match.group(1)


def test_api_logs_the_real_client_address_of_a_request_through_the_proxy(
    nginx_proxy: NginxProxy,
) -> None:
    path = f"/tokens/analysis-result/{uuid.uuid4()}"
    # A third loopback address: neither the API's default trusted proxy nor PROXY_ADDR.
    transport = httpx.HTTPTransport(local_address=CLIENT_ADDR)

    with httpx.Client(transport=transport, timeout=10) as client:
        # The client claims another address; the proxy passes on the one it saw.
        client.get(f"{nginx_proxy.url}{path}", headers={"X-Forwarded-For": "203.0.113.7"})

    assert api_client_of(nginx_proxy.api, path) == CLIENT_ADDR


def test_api_ignores_x_forwarded_for_sent_straight_to_it_from_elsewhere_than_the_proxy(
    nginx_proxy: NginxProxy,
) -> None:
    path = f"/tokens/analysis-result/{uuid.uuid4()}"

    # From 127.0.0.1, which uvicorn would trust by default.
    httpx.get(
        f"http://127.0.0.1:{nginx_proxy.api_port}{path}",
        headers={"X-Forwarded-For": "203.0.113.7"},
        timeout=10,
    )

    assert api_client_of(nginx_proxy.api, path) == "127.0.0.1"


def test_sequential_requests_through_the_proxy_reuse_a_few_upstream_connections(
    nginx_proxy: NginxProxy,
) -> None:
    before = peer_ports(nginx_proxy.api_port, PROXY_ADDR)

    for _ in range(40):  # a new client connection each time: the reuse is nginx's
        assert httpx.get(f"{nginx_proxy.url}/healthz", timeout=10).status_code == 200

    opened = peer_ports(nginx_proxy.api_port, PROXY_ADDR) - before
    # One or two per nginx worker; without upstream keep-alive, one per request.
    assert 1 <= len(opened) <= 6, sorted(opened)


def test_flower_through_the_proxy_wants_its_basic_auth(
    nginx_proxy: NginxProxy, flower_auth: tuple[str, str]
) -> None:
    assert httpx.get(f"{nginx_proxy.url}/flower/", timeout=10).status_code == 401

    page = httpx.get(f"{nginx_proxy.url}/flower/", auth=flower_auth, timeout=10)

    assert page.status_code == 200
    asset = re.search(r'href="(/flower/static/css/[^"]+)"', page.text)
    assert asset, "Flower links its assets under its prefix"
    css = httpx.get(f"{nginx_proxy.url}{asset.group(1)}", auth=flower_auth, timeout=10)
    assert css.status_code == 200
    assert css.headers["content-type"].startswith("text/css")


def test_sse_through_proxy_when_a_client_stops_reading_then_nginx_does_not_spool_its_stream(
    nginx_proxy: NginxProxy, redis_client: redis.Redis, redis_url: str, token_id: str
) -> None:
    job_id = create_job(redis_url, token_id)
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", httpx.URL(nginx_proxy.url).port))
    stalled.sendall(
        f"GET /tokens/analysis-progress/{job_id} HTTP/1.1\r\nHost: x\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    try:
        store = sync_store(redis_url)
        for index in range(150):  # ~6 MB of events the client never reads
            store.update(
                job_id,
                token_id,
                status="processing",
                progress=index // 2,
                stage="analyzing",
                message=f"{index} " + "x" * 40_000,
            )

        # Buffered, nginx would read the stream ahead of its client into memory, then into a
        # temp file kept for the response's life, and the API would never see the stall.
        # Watched for a second while the API pushes the backlog: no such file appears.
        with pytest.raises(TimeoutError):
            wait_until(
                lambda: files_open(nginx_pids(nginx_proxy), "/proxy_temp/"),
                timeout=1,
                what="nginx spooling the stream of a client that stopped reading",
            )
    finally:
        stalled.close()
