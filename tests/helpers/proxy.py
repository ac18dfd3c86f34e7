"""A loopback TCP proxy that a test can cut: existing connections are reset and new ones
refused until it is restored. Lets a test take a service "down" mid-transfer while the service
itself (and its state) stays alive. It can also throttle: a slow link, so that a transfer lasts
long enough to be watched (and interrupted) in the middle; or delay: a far-away service, every
chunk held back a while in each direction (so every round trip costs twice that)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from devtools.stack import free_port

_RESET = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # struct linger {on, 0 s}


class CuttableProxy:
    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self._target = ("127.0.0.1", target_port)
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._open = threading.Event()
        self._open.set()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.bytes_forwarded = 0
        self._cut_at: int | None = None
        self._outage = 0.0
        self.cuts = 0
        self._rate: float | None = None
        self._delay = 0.0
        self._link_free_at = 0.0
        self._pace_lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut(self) -> None:
        self._open.clear()
        with self._lock:
            for sock in list(self._sockets):
                with contextlib.suppress(OSError):
                    # SO_LINGER 0: a reset, like a crashed peer.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
                _close(sock)
            self._sockets.clear()

    def cut_after(self, forwarded_bytes: int, *, outage_seconds: float) -> None:
        """Cut once this many bytes went through (mid-transfer), restore after the outage."""
        self._cut_at, self._outage = forwarded_bytes, outage_seconds

    def throttle(self, bytes_per_second: float | None) -> None:
        """Forward at most this many bytes a second, all connections and both directions
        together (one shared link); None lifts the limit."""
        self._rate = bytes_per_second

    def delay(self, seconds: float) -> None:
        """Hold every chunk back `seconds` before forwarding it (latency, not bandwidth)."""
        self._delay = seconds

    def _pace(self, size: int) -> None:
        rate = self._rate
        if not rate:
            return
        with self._pace_lock:
            start = max(time.monotonic(), self._link_free_at)
            self._link_free_at = start + size / rate
            done = self._link_free_at
        # The throttle itself: these bytes take their share of the link's time.
        time.sleep(max(0.0, done - time.monotonic()))

    def restore(self) -> None:
        self._open.set()

    def close(self) -> None:
        self.cut()
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._open.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self._target)
            except OSError:
                client.close()
                continue
            with self._lock:
                if not self._open.is_set():  # cut while connecting: cut() cleared before locking
                    _close(client)
                    _close(upstream)
                    continue
                self._sockets |= {client, upstream}
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536 if self._rate is None else 16384):
                self._pace(len(data))
                if self._delay:
                    time.sleep(self._delay)
                self.bytes_forwarded += len(data)
                if self._cut_at is not None and self.bytes_forwarded >= self._cut_at:
                    self._cut_at = None
                    self.cuts += 1
                    threading.Timer(self._outage, self.restore).start()
                    self.cut()
                    return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                _close(sock)


def _close(sock: socket.socket) -> None:
    """shutdown() before close(): on Linux a plain close() does not wake the other pipe thread
    blocked in recv() on the same socket, and while that recv holds the socket the connection
    stays open, so the client would wait for a response that never comes (its read timeout)."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
