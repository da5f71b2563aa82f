"""The egress policy's pure checks (connectors/egress.py): which URLs and addresses a
connector may send a tenant's credentials to. No sockets: every resolver here is a table."""

from __future__ import annotations

import pytest

from connectors.egress import (
    EgressRefused,
    Target,
    check_target,
    loopback_allowed,
    parse_target,
)


def no_dns(host: str, port: int) -> list[str]:
    raise AssertionError(f"{host} must be judged without resolving it")


def dns(table: dict[str, list[str]]):
    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError(f"no such host {host}")
        return table[host]

    return resolve


# (url, what live mode says: None = allowed, else a fragment of the refusal)
LIVE_TABLE = [
    ("https://93.184.216.34/", None),
    ("http://8.8.8.8:8080/rest", None),
    ("https://[2606:4700:4700::1111]/", None),
    ("http://[::ffff:8.8.8.8]/", None),  # IPv4-mapped public: the IPv4 host 8.8.8.8
    # loopback, every spelling
    ("http://127.0.0.1:8080/", "loopback"),
    ("http://127.8.9.10/", "loopback"),
    ("http://[::1]/", "loopback"),
    ("http://[::ffff:127.0.0.1]/", "loopback"),
    ("http://[::ffff:7f00:1]/", "loopback"),
    ("http://[64:ff9b::7f00:1]/", "loopback"),  # NAT64-embedded
    ("http://[2002:7f00:1::]/", "loopback"),  # 6to4-embedded
    ("http://localhost:8080/", "loopback host"),
    ("http://LOCALHOST./", "loopback host"),
    ("http://api.localhost/", "loopback host"),
    # non-standard IPv4 spellings are refused, not interpreted
    ("http://2130706433/", "non-standard"),  # decimal 127.0.0.1
    ("http://0x7f000001/", "non-standard"),  # hex
    ("http://0x7f.1/", "non-standard"),
    ("http://127.1/", "non-standard"),
    ("http://0177.0.0.1/", "not a valid URL"),  # octal: the URL parser refuses it
    ("http://017700000001/", "non-standard"),
    # link-local, including cloud metadata
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[fe80::1%25eth0]/", "zone"),
    # private
    ("http://10.0.0.5/", "private"),
    ("http://172.16.0.1/", "private"),
    ("http://192.168.1.1/", "private"),
    ("http://[fc00::1]/", "private"),
    ("http://[fd12:3456::1]/", "private"),
    ("http://[::ffff:10.0.0.1]/", "private"),
    ("http://[::ffff:169.254.169.254]/", "link-local"),
    # unspecified, multicast, reserved, shared
    ("http://0.0.0.0/", "unspecified"),
    ("http://[::]/", "unspecified"),
    ("http://224.0.0.1/", "multicast"),
    ("http://[ff02::1]/", "multicast"),
    ("http://240.0.0.1/", "reserved"),
    ("http://255.255.255.255/", "a "),
    ("http://100.64.0.1/", "non-public"),  # carrier-grade NAT
    ("http://192.0.2.10/", "private"),  # documentation range
    # not http(s), or not a plain host
    ("ftp://93.184.216.34/", "http or https"),
    ("file:///etc/passwd", "http or https"),
    ("gopher://93.184.216.34:70/", "http or https"),
    ("http://user:pw@93.184.216.34/", "user name or password"),
    ("http://93.184.216.34@127.0.0.1/", "user name or password"),
    ("http:///no-host", "no host"),
    ("not a url at all", "http or https"),
]


@pytest.mark.parametrize(("url", "refusal"), LIVE_TABLE)
def test_live_mode_table(url: str, refusal: str | None) -> None:
    if refusal is None:
        got = check_target(url, livemode=True, resolve=no_dns)
        assert got.addresses
        return
    with pytest.raises(EgressRefused) as info:
        check_target(url, livemode=True, resolve=no_dns)
    assert refusal in info.value.reason


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://localhost/",
    ],
)
def test_test_mode_may_reach_loopback(url: str) -> None:
    got = check_target(url, livemode=False, resolve=dns({"localhost": ["127.0.0.1", "::1"]}))
    assert all(ip.is_loopback for ip in got.addresses)
    # ...unless loopback is switched off for it too
    with pytest.raises(EgressRefused):
        check_target(url, livemode=False, allow_loopback=False, resolve=dns({}))


def test_live_mode_never_reaches_loopback_even_if_asked() -> None:
    assert not loopback_allowed(livemode=True, allow_loopback=True)
    with pytest.raises(EgressRefused):
        check_target("http://127.0.0.1/", livemode=True, allow_loopback=True)


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/",
        "http://10.1.2.3/",
        "http://[fc00::1]/",
        "http://0.0.0.0/",
        "http://2130706433/",
        "http://[64:ff9b::7f00:1]/",  # a tunnelled loopback is not a local stand-in
        "ftp://127.0.0.1/",
    ],
)
def test_test_mode_loosens_nothing_but_loopback(url: str) -> None:
    with pytest.raises(EgressRefused):
        check_target(url, livemode=False, resolve=no_dns)


def test_every_resolved_address_must_be_allowed() -> None:
    """One private answer among public ones refuses the host: a client may connect to any."""
    table = {
        "store.example": ["93.184.216.34", "2606:2800:220:1::1"],
        "mixed.example": ["93.184.216.34", "10.0.0.7"],
        "rebind.example": ["::ffff:169.254.169.254"],
        "inside.example": ["127.0.0.1"],
    }
    got = check_target("https://store.example/rest", livemode=True, resolve=dns(table))
    assert [str(a) for a in got.addresses] == ["93.184.216.34", "2606:2800:220:1::1"]
    for host, kind in [("mixed", "private"), ("rebind", "link-local"), ("inside", "loopback")]:
        with pytest.raises(EgressRefused) as info:
            check_target(f"https://{host}.example/", livemode=True, resolve=dns(table))
        assert info.value.reason.startswith(f"resolves to a {kind} address")


def test_unresolvable_and_empty_answers_are_refused() -> None:
    with pytest.raises(EgressRefused, match="does not resolve"):
        check_target("https://nowhere.example/", livemode=True, resolve=dns({}))
    with pytest.raises(EgressRefused, match="does not resolve"):
        check_target("https://empty.example/", livemode=True, resolve=dns({"empty.example": []}))


def test_mapped_answers_are_connected_to_as_ipv4() -> None:
    got = check_target(
        "http://m.example/", livemode=True, resolve=dns({"m.example": ["::ffff:8.8.8.8"]})
    )
    assert [str(a) for a in got.addresses] == ["8.8.8.8"]


def test_parse_target_normalises_what_the_client_will_use() -> None:
    assert parse_target("HTTPS://Store.Example.:8443/x") == Target("https", "store.example", 8443)
    assert parse_target("http://store.example") == Target("http", "store.example", 80)
    assert parse_target("https://[::1]/").host == "::1"
    assert parse_target("https://exämple.com/").host == "xn--exmple-cua.com"


def test_refusal_never_depends_on_the_port() -> None:
    """The reason names the address, never the port: no answer differs by what listens."""
    reasons = set()
    for port in (1, 22, 80, 6379, 65535):
        with pytest.raises(EgressRefused) as info:
            check_target(f"http://127.0.0.1:{port}/", livemode=True)
        reasons.add(info.value.reason)
    assert len(reasons) == 1


def test_check_is_deterministic() -> None:
    resolve = dns({"store.example": ["93.184.216.34"]})
    runs = {check_target("https://store.example/", livemode=True, resolve=resolve) for _ in "ab"}
    assert len(runs) == 1
