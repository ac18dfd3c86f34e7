"""The drain of due completion callbacks: `tasks.callbacks.drain`, sent by Beat every
CALLBACK_TICK_SECONDS to the `callbacks` queue (a small thread-pool worker of its own consumes
it: analyses that hold every process of a worker for minutes must not hold callbacks).

One drain claims due deliveries (leased: yousync/core/callbacks.py) as fast as a bounded pool
of threads can send them, until none is due, or its time budget ends (the next drain goes on).
Each attempt POSTs the job end's snapshot with Standard Webhooks headers: the same `webhook-id`
(the delivery id) on every attempt, a fresh timestamp and one signature per CALLBACK_SECRET. A
2xx is delivered; anything else (another status, a timeout, a refused connection, a target the
SSRF policy now refuses) is a failed attempt, retried with backoff until CALLBACK_GIVE_UP_SECONDS
after the job ended, then dead-lettered. Redirects are not followed: the target was checked,
the place it redirects to was not.

Each attempt has one deadline, CALLBACK_TIMEOUT_SECONDS from its claim, for DNS, connect, TLS,
request and response together, and an upload's own target is connected to at the address the
SSRF check approved, by name (yousync/worker/callback_http.py).

Unsigned callbacks: with no CALLBACK_SECRET, `dev`/`test` send without `webhook-signature`
(logged once per process, so a laptop's receiver works without a secret); `prod` refuses such
settings at load (core/config.py), and should a sender see no secret there all the same, it
sends nothing: the attempt fails as `CALLBACK_SECRET is not set`. An unsigned callback in
production would teach the receiver to accept anything that reaches it.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

import httpx

from yousync.core import callback_target, webhooks
from yousync.core.callbacks import Claim, Delivery, DeliveryStore
from yousync.core.config import Settings
from yousync.worker import callback_http, context
from yousync.worker.celery_app import CALLBACKS_QUEUE, DRAIN_CALLBACKS_TASK, celery_app, settings

log = logging.getLogger("yousync.callbacks")

# Attempts in flight per drain (threads, and connections to the receivers).
CONCURRENCY = 16
# A drain stops claiming after this long; what is left is the next drain's.
DRAIN_BUDGET_SECONDS = 30.0
USER_AGENT = "YouSync-Webhooks/1"

NO_SECRET = "CALLBACK_SECRET is not set"
# Of a receiver's answer, only this much of the body is read (the status is what counts).
MAX_RESPONSE_BYTES = 64 * 1024


class Sender:
    """Makes one attempt of a delivery; thread-safe. Two clients, each with its own pool: the
    operator's CALLBACK_URL by name (trusted), uploads' own targets pinned to the address
    checked for the attempt (yousync/worker/callback_http.py)."""

    def __init__(
        self,
        settings: Settings,
        operator_client: httpx.Client,
        pinned_client: httpx.Client,
    ) -> None:
        self._settings = settings
        self._operator = operator_client
        self._pinned = pinned_client
        self._warned = False

    @classmethod
    def open(cls, settings: Settings, *, verify: ssl.SSLContext | bool = True) -> Sender:
        """`verify`: the CA bundle (tests trust their own CA)."""

        def make(pinned: bool) -> httpx.Client:
            return callback_http.client(
                settings.callback_timeout_seconds,
                pinned=pinned,
                connections=CONCURRENCY * 2,
                verify=verify,
            )

        return cls(settings, make(pinned=False), make(pinned=True))

    def close(self) -> None:
        self._operator.close()
        self._pinned.close()

    def __enter__(self) -> Sender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def secrets(self) -> list[str] | None:
        """The signing secrets; None when this environment refuses to send unsigned."""
        secrets = self._settings.callback_secrets
        if secrets:
            return secrets
        if self._settings.environment == "prod":
            return None
        if not self._warned:
            self._warned = True
            log.warning("callbacks: CALLBACK_SECRET is not set; sending unsigned callbacks")
        return []

    def attempt(self, delivery: Delivery, *, deadline: float | None = None) -> str | None:
        """None when the receiver answered 2xx, else what went wrong (kept on the record). The
        whole attempt (DNS, connect, TLS, request, response) ends by `deadline`
        (time.monotonic(); CALLBACK_TIMEOUT_SECONDS from now by default)."""
        if deadline is None:
            deadline = time.monotonic() + self._settings.callback_timeout_seconds
        secrets = self.secrets()
        if secrets is None:
            return NO_SECRET
        body = delivery.body()

        def resolve(host: str, port: int) -> list[str]:
            return callback_http.resolve(host, port, timeout=deadline - time.monotonic())

        try:
            target = callback_target.resolve_for_send(
                delivery.url, self._settings, operator_set=delivery.operator_set, resolve=resolve
            )
            headers = webhooks.headers(secrets, delivery.id, body)
            headers["user-agent"] = USER_AGENT
            client, pin = self._operator, None
            if target.address is not None:
                pin = callback_http.Pin(target.host, target.port, target.address)
                client = self._pinned
            with (
                callback_http.attempt(deadline, pin),
                client.stream("POST", delivery.url, content=body, headers=headers) as response,
            ):
                status = response.status_code
                _read_some(response)
        except callback_target.CallbackTargetRefused as exc:
            return f"refused: {exc}"
        except callback_http.AttemptTimeout as exc:
            return f"timeout: {exc}"
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
            return f"{type(exc).__name__}: {exc}"
        if 200 <= status < 300:
            return None
        return f"HTTP {status}"


def _read_some(response: httpx.Response) -> None:
    """Read a little of the body, so a short answer leaves the connection reusable; the status
    is the answer, so a body that fails or outlasts the deadline changes nothing."""
    read = 0
    try:
        for chunk in response.iter_raw():
            read += len(chunk)
            if read >= MAX_RESPONSE_BYTES:
                return
    except httpx.HTTPError:
        return


def drain_once(
    store: DeliveryStore,
    sender: Sender,
    *,
    concurrency: int = CONCURRENCY,
    budget_seconds: float = DRAIN_BUDGET_SECONDS,
) -> int:
    """Send what is due, `concurrency` at a time, claiming more as attempts finish; returns the
    attempts made."""
    deadline = time.monotonic() + budget_seconds
    made = 0
    in_flight: set[Future[None]] = set()
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="callback") as pool:
        while True:
            free = concurrency - len(in_flight)
            if free > 0 and time.monotonic() < deadline:
                claim = store.claim(free)
                claimed_at = time.monotonic()
                for delivery in claim.deliveries:
                    in_flight.add(pool.submit(_send, store, sender, delivery, claim, claimed_at))
                made += len(claim.deliveries)
            if not in_flight:
                return made
            _done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)


def _send(
    store: DeliveryStore, sender: Sender, delivery: Delivery, claim: Claim, claimed_at: float
) -> None:
    try:
        error = sender.attempt(delivery, deadline=claimed_at + store.attempt_seconds)
    except Exception as exc:  # a bug must not leave the delivery leased until the lease ends
        log.exception("callback %s: attempt failed unexpectedly", delivery.id)
        error = f"internal: {type(exc).__name__}"
    if error is None:
        attempts = store.delivered(delivery)
        log.info("callback %s: delivered (attempt %d)", delivery.id, attempts)
        return
    now = claim.now + (time.monotonic() - claimed_at)
    due = store.failed(delivery, error, now=now)
    if due is None:
        log.warning(
            "callback %s: dead-lettered after %d attempts: %s",
            delivery.id,
            delivery.attempts + 1,
            error,
        )
    else:
        log.info(
            "callback %s: attempt %d failed (%s); next in %.1fs",
            delivery.id,
            delivery.attempts + 1,
            error,
            due - now,
        )


_lock = threading.Lock()
_sender: Sender | None = None


def _process_sender() -> Sender:
    """One sender per process (its connection pools keep receivers' connections open between
    drains), built on first use, after the fork."""
    global _sender
    with _lock:
        if _sender is None:
            _sender = Sender.open(settings)
        return _sender


def _forget_in_child() -> None:
    global _sender, _lock
    _sender = None
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)


@celery_app.task(
    name=DRAIN_CALLBACKS_TASK,
    queue=CALLBACKS_QUEUE,
    acks_late=False,  # a drain lost with its worker is not worth redelivering: Beat sends more
    ignore_result=True,
)
def drain() -> int:
    ctx = context.get()
    return drain_once(DeliveryStore(ctx.redis, ctx.settings), _process_sender())
