"""The HTTP side of a callback attempt: where its connection goes, and how long it may take.

Two things httpx does not do for us, both done below its pool, in the network backend:

* **Connect to the checked address, by name.** An upload's own target is resolved and checked
  at every attempt (core/callback_target.py); the connection must go to that address, not to
  whatever a second lookup answers (DNS rebinding). Rewriting the URL's host to the address
  would key httpx's pool by address, so a keep-alive connection whose TLS was verified for
  host A would carry a request for host B on the same address, unverified. So the request keeps
  its real URL (pool key, TLS verification, SNI and Host all by name) and the backend of the
  pinned client connects to the address checked for this attempt (`Pin`), and refuses any
  other host. The operator's CALLBACK_URL (trusted) goes through a client of its own, by name.
* **A total deadline per attempt.** httpx's timeouts bound each connect, read and write, and
  getaddrinfo has none: a receiver that drips a byte a second, or a resolver that hangs, would
  hold an attempt past its lease, and another drain would send the same delivery meanwhile.
  Here every socket operation waits at most the time left to the attempt (and fails as a
  timeout once none is left), and names are resolved in a thread waited on for that time.

The attempt's deadline and pin are thread-local (`attempt`): httpx's sync pool connects and
reads in the thread that sends the request, and one attempt is one thread.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
import typing
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpcore
import httpx

# Writes go in pieces this small, each bounded by the time left: a receiver that reads slowly
# cannot stretch one write past the deadline.
WRITE_CHUNK = 4096


class AttemptTimeout(Exception):
    """The attempt's deadline passed while a name was being resolved. Not an OSError: the SSRF
    check counts those as "does not resolve"."""


@dataclass(frozen=True)
class Pin:
    """The pinned client may connect to `host`:`port` only, and then to `address` only."""

    host: str
    port: int
    address: str

    def admits(self, host: str, port: int) -> bool:
        return port == self.port and _plain(host) == _plain(self.host)


def _plain(host: str) -> str:
    return host.rstrip(".").lower()


@dataclass(frozen=True)
class _Attempt:
    deadline: float  # time.monotonic()
    pin: Pin | None


_local = threading.local()


@contextmanager
def attempt(deadline: float, pin: Pin | None = None) -> Iterator[None]:
    """Requests made by this thread inside the block belong to one attempt: they end by
    `deadline` (time.monotonic()), and the pinned client connects to `pin` only."""
    _local.attempt = _Attempt(deadline, pin)
    try:
        yield
    finally:
        _local.attempt = None


def _current() -> _Attempt | None:
    current: _Attempt | None = getattr(_local, "attempt", None)
    return current


def time_left(exc: Callable[[str], Exception], timeout: float | None = None) -> float | None:
    """`timeout` cut to what is left of this thread's attempt; raises `exc` when nothing is."""
    current = _current()
    if current is None:
        return timeout
    left = current.deadline - time.monotonic()
    if left <= 0:
        raise exc("the attempt's deadline passed")
    return left if timeout is None else min(timeout, left)


def _getaddrinfo(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def resolve(host: str, port: int, *, timeout: float | None) -> list[str]:
    """getaddrinfo, waited on for at most `timeout` s (AttemptTimeout after). It runs in a
    daemon thread: one that hangs is left to the system resolver's own limit, and does not hold
    the attempt or the process' exit."""
    found: list[list[str]] = []
    failed: list[BaseException] = []
    done = threading.Event()

    def run() -> None:
        try:
            found.append(_getaddrinfo(host, port))
        except BaseException as exc:  # handed to the waiting thread
            failed.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, name="callback-dns", daemon=True).start()
    if not done.wait(None if timeout is None else max(timeout, 0.0)):
        raise AttemptTimeout(f"resolving {host!r} outlasted the attempt's deadline")
    if failed:
        raise failed[0]
    return found[0]


class _Stream(httpcore.NetworkStream):
    """A connection whose every operation waits at most the time left to the attempt of the
    thread using it (a pooled connection serves attempts of several threads in turn)."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, time_left(httpcore.ReadTimeout, timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        for start in range(0, len(buffer), WRITE_CHUNK):
            self._inner.write(
                buffer[start : start + WRITE_CHUNK], time_left(httpcore.WriteTimeout, timeout)
            )

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        return _Stream(
            self._inner.start_tls(
                ssl_context, server_hostname, time_left(httpcore.ConnectTimeout, timeout)
            )
        )

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    """Connects by the attempt's pin (`pinned`) or by name, resolved within the deadline."""

    def __init__(self, *, pinned: bool) -> None:
        self._inner = httpcore.SyncBackend()
        self._pinned = pinned

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        if self._pinned:
            current = _current()
            pin = current.pin if current is not None else None
            if pin is None or not pin.admits(host, port):
                raise httpcore.ConnectError(
                    f"{host}:{port} is not the host checked for the attempt"
                )
            addresses = [pin.address]
        else:
            try:
                addresses = resolve(host, port, timeout=time_left(httpcore.ConnectTimeout))
            except AttemptTimeout as exc:
                raise httpcore.ConnectTimeout(str(exc)) from exc
            except OSError as exc:
                raise httpcore.ConnectError(f"{host!r} does not resolve: {exc}") from exc
        error: Exception = httpcore.ConnectError(f"{host!r} has no address")
        for address in addresses:
            try:
                stream = self._inner.connect_tcp(
                    address,
                    port,
                    timeout=time_left(httpcore.ConnectTimeout, timeout),
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore.ConnectError as exc:  # refused: the next address may answer
                error = exc
                continue
            return _Stream(stream)
        raise error

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("callbacks go over TCP only")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _Transport(httpx.HTTPTransport):
    """httpx's transport on our network backend (HTTPTransport takes no backend argument)."""

    def __init__(
        self, backend: httpcore.NetworkBackend, limits: httpx.Limits, verify: ssl.SSLContext | bool
    ) -> None:
        super().__init__(verify=verify, trust_env=False, limits=limits)
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=backend,
        )


def client(
    timeout: float, *, pinned: bool, connections: int, verify: ssl.SSLContext | bool = True
) -> httpx.Client:
    """A client for attempts (`pinned`: uploads' own targets; else the operator's). No
    redirects (the place a target redirects to was not checked); `trust_env=False`: proxies
    and .netrc from the environment do not apply (a proxy would resolve the host itself)."""
    limits = httpx.Limits(max_connections=connections)
    return httpx.Client(
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
        transport=_Transport(_Backend(pinned=pinned), limits, verify),
    )
