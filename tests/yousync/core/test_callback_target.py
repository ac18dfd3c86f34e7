"""Callback targets: an upload's URL must name an allowlisted host and resolve only to
addresses we may send to, at upload and again at every attempt (DNS rebinding). Resolution is
injected here (a unit); the upload tests use the real resolver."""

from __future__ import annotations

import pytest

from yousync.core.callback_target import CallbackTargetRefused, check_requested, resolve_for_send
from yousync.core.config import Settings


def settings(allowed: str) -> Settings:
    return Settings(callback_allowed_hosts=allowed)


def resolver(*addresses: str):  # type: ignore[no-untyped-def]
    return lambda host, port: list(addresses)


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example.org/hook",
        "http://127.0.0.1:9000/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/hook",
        "ftp://hooks.example.com/hook",
        "https://user:pw@hooks.example.com/hook",
        "https:///hook",
        "hooks.example.com/hook",
        "https://hooks.example.com:99999/hook",
    ],
)
def test_check_when_the_url_is_off_the_allowlist_or_malformed_then_refused(url: str) -> None:
    with pytest.raises(CallbackTargetRefused):
        check_requested(url, settings("hooks.example.com,*.partner.example"))


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/hook",
        "https://HOOKS.example.com./hook?x=1",
        "https://a.b.partner.example/hook",
        "http://127.0.0.1:9000/hook",
    ],
)
def test_check_when_the_host_is_allowlisted_then_accepted(url: str) -> None:
    check_requested(url, settings("hooks.example.com,*.partner.example,127.0.0.1:9000"))


def test_send_when_an_allowlisted_name_resolves_to_a_public_address_then_it_connects_there() -> (
    None
):
    target = resolve_for_send(
        "https://hooks.example.com/a?b=1",
        settings("hooks.example.com"),
        operator_set=False,
        resolve=resolver("93.184.216.34"),
    )
    assert target.url == "https://hooks.example.com/a?b=1"
    assert (target.host, target.port, target.address) == ("hooks.example.com", 443, "93.184.216.34")


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "169.254.169.254",
        "10.1.2.3",
        "::1",
        "::ffff:127.0.0.1",
        "fd00::1",
        # IPv6 forms that reach an internal IPv4 address (Python counts them global):
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "64:ff9b:1::a9fe:a9fe",  # local-use NAT64
        "::7f00:1",  # IPv4-compatible 127.0.0.1
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
    ],
)
def test_send_when_the_name_now_resolves_to_an_internal_address_then_refused(
    address: str,
) -> None:
    # DNS rebinding: public at upload, internal at the attempt.
    with pytest.raises(CallbackTargetRefused, match="resolves to"):
        resolve_for_send(
            "https://hooks.example.com/a",
            settings("hooks.example.com"),
            operator_set=False,
            resolve=resolver("93.184.216.34", address),
        )


def test_send_when_the_internal_network_is_allowlisted_then_the_name_may_resolve_into_it() -> None:
    target = resolve_for_send(
        "http://hooks.internal:8080/a",
        settings("hooks.internal,10.0.0.0/8"),
        operator_set=False,
        resolve=resolver("10.1.2.3"),
    )
    assert target.url == "http://hooks.internal:8080/a"
    assert (target.host, target.port, target.address) == ("hooks.internal", 8080, "10.1.2.3")


def test_send_when_the_name_no_longer_resolves_then_refused() -> None:
    def gone(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    with pytest.raises(CallbackTargetRefused, match="does not resolve"):
        resolve_for_send(
            "https://hooks.example.com/a",
            settings("hooks.example.com"),
            operator_set=False,
            resolve=gone,
        )


def test_send_when_the_host_left_the_allowlist_since_the_upload_then_refused() -> None:
    with pytest.raises(CallbackTargetRefused, match="allowlist"):
        resolve_for_send(
            "https://hooks.example.com/a",
            settings("other.example.com"),
            operator_set=False,
            resolve=resolver("93.184.216.34"),
        )


def test_send_when_the_operator_set_the_url_then_it_goes_as_set() -> None:
    target = resolve_for_send(
        "http://127.0.0.1:8000/internal/callbacks", settings(""), operator_set=True
    )
    assert target.url == "http://127.0.0.1:8000/internal/callbacks"
    assert target.address is None


def test_send_when_an_allowlisted_loopback_literal_then_it_goes_there() -> None:
    target = resolve_for_send(
        "http://127.0.0.1:9000/hook", settings("127.0.0.1"), operator_set=False
    )
    assert target.url == "http://127.0.0.1:9000/hook"
    assert (target.host, target.port, target.address) == ("127.0.0.1", 9000, "127.0.0.1")


def test_send_when_ipv6_embeds_a_public_ipv4_then_it_is_public() -> None:
    for address in ("2606:4700::1111", "2002:5db8:d822::", "64:ff9b::5db8:d822"):
        resolve_for_send(
            "https://hooks.example.com/a",
            settings("hooks.example.com"),
            operator_set=False,
            resolve=resolver(address),
        )


def test_check_when_the_host_is_internationalised_then_stored_and_matched_as_punycode() -> None:
    url = check_requested(
        "https://Bücher.example.org:8443/h?x=1", settings("*.bücher.example.org,bücher.example.org")
    )
    assert url == "https://xn--bcher-kva.example.org:8443/h?x=1"
    target = resolve_for_send(
        url, settings("bücher.example.org"), operator_set=False, resolve=resolver("93.184.216.34")
    )
    assert (target.host, target.port) == ("xn--bcher-kva.example.org", 8443)
    with pytest.raises(CallbackTargetRefused):
        check_requested("https://bücher.example.org/h", settings("buecher.example.org"))
