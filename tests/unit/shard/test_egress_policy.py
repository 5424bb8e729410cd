"""The egress guard's policy: which hosts, ports and addresses a browser may reach. Pure."""

from __future__ import annotations

import pytest
from shard.egress import Policy, Refused

POLICY = Policy.of("web.whatsapp.com,*.whatsapp.net,10.1.2.3:8443", "http://127.0.0.1:8099")


@pytest.mark.parametrize(
    ("host", "port"),
    [
        ("web.whatsapp.com", 443),
        ("mmg.whatsapp.net", 443),
        ("media-fra3-1.cdn.whatsapp.net", 443),
        ("127.0.0.1", 8099),  # the site of WHATSAPP_URL, exactly
        ("10.1.2.3", 8443),
    ],
)
def test_allowed(host: str, port: int) -> None:
    POLICY.check_host(host, port)


@pytest.mark.parametrize(
    ("host", "port"),
    [
        ("whatsapp.net.evil.example", 443),
        ("evilwhatsapp.net", 443),
        ("127.0.0.1", 6379),  # the site's host, another port: Redis, say
        ("redis", 6379),
        ("169.254.169.254", 80),
        ("10.1.2.3", 443),
    ],
)
def test_refused(host: str, port: int) -> None:
    with pytest.raises(Refused, match=host.replace(".", r"\.")):
        POLICY.check_host(host, port)


def test_special_addresses_only_for_hosts_listed_exactly() -> None:
    POLICY.check_address("127.0.0.1", 8099, "127.0.0.1")
    POLICY.check_address("10.1.2.3", 8443, "10.1.2.3")
    POLICY.check_address("mmg.whatsapp.net", 443, "157.240.0.53")
    for address in ("10.0.0.5", "127.0.0.1", "169.254.169.254", "::1", "fd00::1", "224.0.0.1"):
        with pytest.raises(Refused, match="private or special"):
            POLICY.check_address("mmg.whatsapp.net", 443, address)


def test_a_url_is_refused_naming_its_origin() -> None:
    POLICY.check_url("https://web.whatsapp.com/")
    with pytest.raises(Refused, match=r"origin http://redis:6379 is not allowed"):
        POLICY.check_url("http://redis:6379/")
    with pytest.raises(Refused, match="names no host"):
        POLICY.check_url("file:///etc/passwd")
