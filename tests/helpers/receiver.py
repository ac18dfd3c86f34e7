"""A real HTTP receiver of completion callbacks: a threaded http.server on loopback that records
every request (headers and body), answers a chosen status, can hold requests open, and can be
stopped and started again on the same port (a receiver that is down refuses connections).

While down, its port stays reserved: a socket bound to it that does not listen, so connections
are refused, yet no other process (a test suite picking free ports) can take it meanwhile."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


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
    port: int = 0  # 0: a free one, chosen at creation
    # 127.0.0.3: the tests' allowlisted address for uploads' own targets (tests/conftest.py).
    host: str = "127.0.0.1"
    status: int = 200
    # The first this many requests are answered 503 (a receiver up but not ready yet).
    fail_first: int = 0
    received: list[Received] = field(default_factory=list)
    # Cleared: requests are recorded on arrival, then wait (the connection stays open) until it
    # is set again.
    release: threading.Event = field(default_factory=threading.Event)
    # Set: the receiver speaks HTTPS with this context (tests/helpers/tls.py).
    tls: ssl.SSLContext | None = None
    # True: HTTP/1.1 with keep-alive (a stopped receiver's open connections would still answer,
    # so the down-and-up tests keep the default: a connection per request).
    keep_alive: bool = False
    _server: ThreadingHTTPServer | None = None
    _reserved: socket.socket | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.release.set()
        self._reserve()

    def _reserve(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = int(sock.getsockname()[1])
        self._reserved = sock

    @property
    def url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{self.host}:{self.port}/hooks/yousync"

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
            protocol_version = "HTTP/1.1" if self.keep_alive else "HTTP/1.0"

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

        server = _Server((self.host, self.port), Handler, bind_and_activate=False)
        server.socket.close()
        assert self._reserved is not None, "already started"
        server.socket, self._reserved = self._reserved, None
        server.server_activate()  # listen on the reserved port
        if self.tls is not None:
            server.socket = self.tls.wrap_socket(server.socket, server_side=True)
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
            self._reserve()

    def close(self) -> None:
        """Stop, and give the port back."""
        self.stop()
        if self._reserved is not None:
            self._reserved.close()
            self._reserved = None
