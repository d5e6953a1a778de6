"""app/gate/identity.py: trusted proxies are addresses and networks, each matched as what it
is; a request's client is the rightmost X-Forwarded-For entry that is not a trusted proxy;
the middleware puts it in the scope for every rule after it. Through real sockets and real
nginx: tests/app/gate/test_connections.py and tests/deploy/test_scaleout.py."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from app.engine.service import ModelService
from app.gate.identity import (
    MEMO_SIZE,
    ClientIdentityMiddleware,
    TrustedProxies,
    client_of,
    parse_address,
)
from app.main import create_app
from app.settings import Settings
from tests.app.support import serve_asgi

PROXIES = TrustedProxies.parse(["10.0.0.2", "172.28.5.0/24", "fd00::/64"])


def xff(*values: str) -> list[bytes]:
    return [value.encode("latin-1") for value in values]


@pytest.mark.parametrize(
    ("host", "trusted"),
    [
        ("10.0.0.2", True),  # the one address
        ("10.0.0.3", False),  # its neighbour: an address is not a range
        ("172.28.5.1", True),  # inside the network
        ("172.28.5.255", True),
        ("172.28.6.1", False),  # outside it: a network is not everyone
        ("127.0.0.1", False),  # not the default once the list is given
        ("::ffff:172.28.5.9", True),  # a dual-stack socket's spelling of an IPv4 peer
        ("fd00::1234", True),
        ("fd00:0:0:1::1", False),
        ("testclient", False),  # no address: never a proxy
        ("", False),
    ],
)
def test_addresses_and_networks_are_matched_as_what_they_are(host: str, trusted: bool) -> None:
    assert PROXIES.trusts(host) is trusted


def test_the_default_trusts_this_host_alone() -> None:
    proxies = Settings().trusted_proxies()
    assert proxies.trusts("127.0.0.1") and proxies.trusts("::1")
    assert not proxies.trusts("127.0.0.2") and not proxies.trusts("10.0.0.1")


@pytest.mark.parametrize(
    ("forwarded", "client"),
    [
        (["203.0.113.7"], "203.0.113.7"),  # nginx's entry: the address it was reached from
        (["198.51.100.1, 203.0.113.7"], "203.0.113.7"),  # the left one is the client's own
        (["198.51.100.1", "203.0.113.7"], "203.0.113.7"),  # two headers: one list
        (["203.0.113.7, 172.28.5.4"], "203.0.113.7"),  # through two trusted proxies
        (["203.0.113.7, 10.0.0.2, 172.28.5.4"], "203.0.113.7"),
        (["10.0.0.2, 172.28.5.4"], "10.0.0.2"),  # every hop trusted: the leftmost
        (["203.0.113.7:5123"], "203.0.113.7"),  # a port is not part of the client
        (["[2001:db8::7]:443"], "2001:db8::7"),
        (["2001:db8::7"], "2001:db8::7"),
        (["2001:DB8:0::7"], "2001:db8::7"),  # one client, however a proxy spells it
        (["::ffff:203.0.113.7"], "203.0.113.7"),
        ([], "172.28.5.3"),  # no header: the proxy's own request (a health check)
        ([""], "172.28.5.3"),
        (["203.0.113.7, unknown"], "172.28.5.3"),  # no address where the client should be
        (["203.0.113.7,"], "172.28.5.3"),
        (["1.2.3.4, " + "x" * 10_000], "172.28.5.3"),
        (["\xff\xfe"], "172.28.5.3"),
    ],
)
def test_a_trusted_proxys_request_names_the_rightmost_untrusted_entry(
    forwarded: list[str], client: str
) -> None:
    assert PROXIES.client("172.28.5.3", xff(*forwarded)) == client


def test_an_untrusted_peer_cannot_name_another_client() -> None:
    assert PROXIES.client("198.51.100.9", xff("203.0.113.7")) == "198.51.100.9"
    assert PROXIES.client("172.28.6.1", xff("203.0.113.7")) == "172.28.6.1"


def test_star_believes_the_leftmost_entry_which_the_client_wrote() -> None:
    everyone = TrustedProxies.parse(["*"])
    assert everyone.everyone and everyone.trusts("198.51.100.9")
    assert everyone.client("172.28.5.3", xff("6.6.6.6, 203.0.113.7")) == "6.6.6.6"
    # Mixed with addresses, `*` still trusts every peer.
    assert TrustedProxies.parse(["10.0.0.2", " * "]).everyone


def test_an_empty_list_trusts_no_one() -> None:
    nobody = TrustedProxies.parse(["", " "])
    assert nobody == TrustedProxies()
    assert not nobody.trusts("127.0.0.1")
    assert nobody.client("127.0.0.1", xff("203.0.113.7")) == "127.0.0.1"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("nginx", "'nginx' is not an IP address"),  # a name: peers are addresses
        ("10.0.0.1:80", "is not an IP address"),
        ("10.0.0.256", "is not an IP address"),
        ("10.0.0.1/8", "host bits set: did you mean 10.0.0.0/8"),
        ("10.0.0.0/33", "is not an IP network"),
        ("10.0.0.0/-1", "is not an IP network"),
        ("10.0.0.0/", "is not an IP network"),
        ("**", "is not an IP address"),
    ],
)
def test_an_entry_that_is_no_address_is_refused_by_name(entry: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrustedProxies.parse(["127.0.0.1", entry])


@pytest.mark.parametrize("value", ["nginx", "10.0.0.1/8", "127.0.0.1;10.0.0.0/8", "0x7f"])
def test_the_setting_names_the_field(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", value)
    with pytest.raises(ValidationError, match="forwarded_allow_ips"):
        Settings()


def test_the_setting_is_read_as_uvicorn_reads_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", " 172.28.5.2 ,10.244.0.0/16,")
    proxies = Settings().trusted_proxies()
    assert proxies.trusts("172.28.5.2") and proxies.trusts("10.244.3.4")
    assert not proxies.trusts("172.28.5.3")
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "")
    assert Settings().trusted_proxies() == TrustedProxies()


def test_parse_address_takes_only_addresses() -> None:
    assert str(parse_address(" 10.1.2.3:99 ")) == "10.1.2.3"
    assert str(parse_address("[::1]:8000")) == "::1" and str(parse_address("[::1]")) == "::1"
    bad = ("", "unknown", "_hidden", "10.1.2", "[::1", "[::1]x", "[::1]:", "10.1.2.3:x", "a:b:c")
    for text in bad:
        assert parse_address(text) is None, text


def test_the_memo_of_peers_stays_bounded() -> None:
    proxies = TrustedProxies.parse(["10.0.0.0/8"])
    for index in range(MEMO_SIZE + 10):
        assert proxies.trusts(f"10.{index // 65536}.{index // 256 % 256}.{index % 256}")
    assert len(proxies._memo) <= MEMO_SIZE
    assert not proxies.trusts("11.0.0.1") and proxies.trusts("10.0.0.1")


async def run(proxies: TrustedProxies, scope: dict[str, Any]) -> dict[str, Any]:
    """The scope that the app behind ClientIdentityMiddleware sees."""
    seen: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.update(scope)

    await ClientIdentityMiddleware(app, proxies)(scope, None, None)  # type: ignore[arg-type]
    return seen


def scope_of(peer: tuple[str, int] | None, *headers: tuple[bytes, bytes]) -> dict[str, Any]:
    return {"type": "http", "client": peer, "headers": list(headers), "scheme": "http"}


@pytest.mark.anyio
async def test_the_middleware_puts_the_client_in_the_scope() -> None:
    header = (b"x-forwarded-for", b"6.6.6.6, 203.0.113.7")
    proto = (b"x-forwarded-proto", b"https")
    proxied = await run(PROXIES, scope_of(("10.0.0.2", 4000), header, proto))
    assert client_of(proxied) == "203.0.113.7" and proxied["scheme"] == "https"
    direct = await run(PROXIES, scope_of(("198.51.100.9", 4000), header, proto))
    assert direct["client"] == ("198.51.100.9", 4000) and direct["scheme"] == "http"
    odd = await run(PROXIES, scope_of(("10.0.0.2", 4000), (b"x-forwarded-proto", b"gopher")))
    assert client_of(odd) == "10.0.0.2" and odd["scheme"] == "http"
    assert client_of(await run(PROXIES, scope_of(None, header))) is None  # a unix socket
    lifespan = {"type": "lifespan"}
    assert await run(PROXIES, dict(lifespan)) == lifespan


@pytest.mark.anyio
async def test_every_rule_in_the_app_sees_the_resolved_client(
    settings: Settings, service: ModelService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Behind a trusted proxy (httpx's ASGI peer, 127.0.0.1), the quota middleware asks
    about the forwarded client, and the routes hand that client to the engine, whose
    ledger counts it (and shares rows and prefill credit by it)."""
    ledger = service.engine.clients
    asked: list[str] = []
    claimed: list[str | None] = []
    claim = ledger.claim

    def full(client: str) -> bool:
        asked.append(client)
        return client == "6.6.6.6"

    def spy(client: str | None) -> None:
        claimed.append(client)
        claim(client)

    monkeypatch.setattr(ledger, "full", full)
    monkeypatch.setattr(ledger, "claim", spy)
    async with serve_asgi(create_app(settings, service)) as http:
        body = {"length": 3}
        spoofed = await http.post("/generate", json=body, headers={"X-Forwarded-For": "6.6.6.6"})
        assert spoofed.status_code == 429
        other = await http.post("/generate", json=body, headers={"X-Forwarded-For": "7.7.7.7"})
        assert other.status_code == 200, other.text
    assert asked == ["6.6.6.6", "7.7.7.7"] and claimed == ["7.7.7.7"]


@pytest.mark.anyio
async def test_star_is_warned_about_at_start_up(
    settings: Settings, service: ModelService, caplog: pytest.LogCaptureFixture
) -> None:
    for value, warned in ((("*",), True), (("127.0.0.1",), False)):
        caplog.clear()
        changed = settings.model_copy(update={"forwarded_allow_ips": value})
        with caplog.at_level(logging.WARNING, logger="uvicorn.error"):
            async with serve_asgi(create_app(changed, service)):
                pass
        assert any("FORWARDED_ALLOW_IPS=*" in r.getMessage() for r in caplog.records) is warned


def test_httpx_sends_from_the_trusted_default() -> None:
    # The app tests above rely on httpx's ASGI transport posing as 127.0.0.1.
    assert httpx.ASGITransport(app=None).client[0] == "127.0.0.1"  # type: ignore[arg-type]


@pytest.mark.anyio
@pytest.mark.parametrize("trusted", ["127.0.0.1,10.0.0.0/8", "*", ""])
@pytest.mark.parametrize(
    ("peer", "forwarded"),
    [
        ("127.0.0.1", "203.0.113.7"),
        ("10.1.2.3", "6.6.6.6, 203.0.113.7, 10.0.0.9"),
        ("10.1.2.3", "10.0.0.4, 127.0.0.1"),
        ("198.51.100.9", "203.0.113.7"),
        ("127.0.0.1", ""),
    ],
)
async def test_uvicorns_own_middleware_before_ours_changes_nothing(
    trusted: str, peer: str, forwarded: str
) -> None:
    """Under `uvicorn app.main:app` uvicorn applies FORWARDED_ALLOW_IPS first, then the
    app: the client is the one the app alone finds."""
    proxies = TrustedProxies.parse(trusted.split(","))
    headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded else []
    alone = await run(proxies, scope_of((peer, 4000), *headers))
    seen: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.update(scope)

    ours = ClientIdentityMiddleware(app, proxies)
    both = ProxyHeadersMiddleware(ours, trusted_hosts=trusted)  # type: ignore[arg-type]
    await both(scope_of((peer, 4000), *headers), None, None)  # type: ignore[arg-type]
    assert client_of(seen) == client_of(alone)
