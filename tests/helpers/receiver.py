"""A real HTTP receiver of completion callbacks: a threaded http.server on loopback that records
every request (headers and body), answers a chosen status, can hold requests open, and can be
stopped and started again on the same port (a receiver that is down refuses connections)."""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from devtools.stack import free_port


class _Server(ThreadingHTTPServer):
    # A drain opens up to 16 connections at once; the default listen backlog (5) drops SYNs
    # on a loaded machine, and a connect retried after 1 s, 3 s … reads as a slow receiver.
    request_queue_size = 128


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    port: int = field(default_factory=free_port)
    # 127.0.0.3: the tests' allowlisted address for uploads' own targets (tests/conftest.py).
    host: str = "127.0.0.1"
    status: int = 200
    # The first this many requests are answered 503 (a receiver up but not ready yet).
    fail_first: int = 0
    received: list[Received] = field(default_factory=list)
    # Cleared: requests are recorded on arrival, then wait (the connection stays open) until it
    # is set again.
    release: threading.Event = field(default_factory=threading.Event)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.release.set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/hooks/yousync"

    def bodies(self) -> list[bytes]:
        with self._lock:
            return [r.body for r in self.received]

    def requests(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def reset(self) -> None:
        self.stop()
        with self._lock:
            self.received.clear()
        self.status, self.fail_first = 200, 0
        self.release.set()

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.received.append(
                        Received({k.lower(): v for k, v in self.headers.items()}, body)
                    )
                    status = (
                        503 if len(receiver.received) <= receiver.fail_first else receiver.status
                    )
                receiver.release.wait(60)
                with contextlib.suppress(OSError):  # the sender may have died meanwhile
                    self.send_response(status)
                    self.send_header("content-length", "0")
                    self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        server = _Server((self.host, self.port), Handler)
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self.release.set()
            self._server.shutdown()
            self._server.server_close()
            self._server = None
