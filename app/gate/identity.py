"""Who a request's client is: the one answer that every per-client rule keys on.

    FORWARDED_ALLOW_IPS   the proxies whose X-Forwarded-For is believed, comma-separated:
                          addresses and CIDR ranges ("10.0.0.2,10.1.0.0/16"), each matched as
                          what it is; empty: none; `*`: every peer (see below). The variable
                          uvicorn reads, with uvicorn's default: 127.0.0.1,::1

A peer that is not a trusted proxy is its own client, from its connection's first byte:
app/gate/connections.py counts its connections (MAX_CONNECTIONS_PER_CLIENT) and refuses it
early at its quota under that address. A trusted proxy's connections carry many clients'
requests, so each request's client is resolved from its X-Forwarded-For: the rightmost entry
that is not itself a trusted proxy (what nginx's realip with real_ip_recursive and Envoy's
xff_num_trusted_hops pick). Each proxy appends the address it was reached from, so that
entry was written by the outermost trusted proxy; whatever lies left of it was written by
the client and is not believed. `ClientIdentityMiddleware` writes the answer into the
request's scope (`scope["client"]`), before any other middleware runs, and `client_of`
reads it there for the quota, the access log and the routes (which hand it to the engine:
fair shares, prefill credit, MAX_REQUESTS_PER_CLIENT).

An entry that is no address (`unknown`, an obfuscated name, garbage) ends the search: the
request counts as the proxy's own. With `*` every entry is trusted, so the search ends at the
leftmost one, which the client wrote: any client may then name itself anything. `*` is for
a service that only a proxy which replaces the header can reach.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Receive, Scope, Send

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# uvicorn's default for FORWARDED_ALLOW_IPS: a proxy on the same host.
DEFAULT_TRUSTED = ("127.0.0.1", "::1")
SCHEMES = frozenset({"http", "https", "ws", "wss"})  # X-Forwarded-Proto values taken
# Peers whose trust is remembered: parsing an address costs microseconds, and a flood of
# connections from a few addresses asks about the same ones again and again.
MEMO_SIZE = 4096


def parse_address(text: str) -> Address | None:
    """The address in an X-Forwarded-For entry (`1.2.3.4`, `1.2.3.4:5678`, `[::1]:80`,
    `2001:db8::1`), an IPv4-mapped IPv6 one as IPv4; None when it is not one."""
    text = text.strip()
    if text.startswith("["):  # [v6] or [v6]:port
        text, closed, port = text[1:].partition("]")
        if not closed or (port and not (port[0] == ":" and port[1:].isdigit())):
            return None
    elif text.count(":") == 1:  # v4:port
        text, _, port = text.partition(":")
        if not port.isdigit():
            return None
    try:
        return _plain(ipaddress.ip_address(text))
    except ValueError:
        return None


def _plain(address: Address) -> Address:
    """An IPv4-mapped IPv6 address (::ffff:10.0.0.2, a dual-stack socket's peer) as the IPv4
    address it is, so that it matches an IPv4 entry and counts as that client."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True)
class TrustedProxies:
    """The peers whose X-Forwarded-For is believed: `addresses` exactly, anything inside
    `networks`, or every peer (`everyone`, from `*`)."""

    addresses: frozenset[Address] = frozenset()
    networks: tuple[Network, ...] = ()
    everyone: bool = False
    # host → trusted, for `trusts`; emptied when full (an address is parsed again then).
    _memo: dict[str, bool] = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def parse(cls, entries: Iterable[str]) -> TrustedProxies:
        """From FORWARDED_ALLOW_IPS' entries (blank ones skipped). Raises ValueError naming
        an entry that is neither `*`, an address nor a network."""
        addresses: set[Address] = set()
        networks: list[Network] = []
        everyone = False
        for raw in entries:
            entry = raw.strip()
            if entry == "*":
                everyone = True
            elif "/" in entry:
                networks.append(_network(entry))
            elif entry:
                try:
                    addresses.add(_plain(ipaddress.ip_address(entry)))
                except ValueError:
                    message = f"{entry!r} is not an IP address, a network (10.0.0.0/8) or *"
                    raise ValueError(message) from None
        return cls(frozenset(addresses), tuple(networks), everyone)

    def trusts(self, host: str) -> bool:
        """Whether `host` (a peer's address, or an X-Forwarded-For entry) is a trusted
        proxy. A name that is no address is never one (except under `*`)."""
        if self.everyone:
            return True
        if not self.addresses and not self.networks:
            return False
        known = self._memo.get(host)
        if known is None:
            if len(self._memo) >= MEMO_SIZE:
                self._memo.clear()
            address = parse_address(host)
            known = self._memo[host] = address is not None and self._trusted(address)
        return known

    def _trusted(self, address: Address) -> bool:
        return address in self.addresses or any(address in net for net in self.networks)

    def client(self, peer: str, forwarded_for: Iterable[bytes]) -> str:
        """The client of a request from `peer` with these X-Forwarded-For values: `peer`
        itself unless it is a trusted proxy; else the rightmost entry that is not one (the
        leftmost when all are), or `peer` when that entry is no address."""
        if not self.trusts(peer):
            return peer
        entries = b",".join(forwarded_for).decode("latin-1").split(",")
        if self.everyone:  # every entry is trusted: the search ends at the leftmost
            entries = entries[:1]
        chosen = peer
        for entry in reversed(entries):  # no header: [""], the proxy's own request
            address = parse_address(entry)
            if address is None:
                return peer
            chosen = str(address)
            if not self._trusted(address):
                break
        return chosen


def _network(entry: str) -> Network:
    try:
        return ipaddress.ip_network(entry)
    except ValueError as error:
        if "host bits set" in str(error):
            network = ipaddress.ip_network(entry, strict=False)
            raise ValueError(f"{entry!r} has host bits set: did you mean {network}?") from None
        raise ValueError(f"{entry!r} is not an IP network (such as 10.0.0.0/8)") from None


def client_of(scope: Scope) -> str | None:
    """The client of a request, as `ClientIdentityMiddleware` resolved it (the peer's
    address where no trusted proxy vouches for another); None when the server knows none."""
    client = scope.get("client")
    return client[0] if client else None


class ClientIdentityMiddleware:
    """Puts each request's client (`TrustedProxies.client`) in its scope, and a trusted
    proxy's X-Forwarded-Proto in its scheme, as uvicorn's ProxyHeadersMiddleware would:
    `python -m app` runs this one in its place, so that the rule is this module's."""

    def __init__(self, app: ASGIApp, proxies: TrustedProxies):
        self.app = app
        self.proxies = proxies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        peer = scope.get("client")
        if scope["type"] in ("http", "websocket") and peer and self.proxies.trusts(peer[0]):
            forwarded = [value for name, value in scope["headers"] if name == b"x-forwarded-for"]
            client = self.proxies.client(peer[0], forwarded)
            if client != peer[0]:
                scope["client"] = (client, 0)  # in place: the access log reads it at the end
            proto = [value for name, value in scope["headers"] if name == b"x-forwarded-proto"]
            scheme = proto[-1].decode("latin-1").strip().lower() if proto else ""
            if scheme in SCHEMES:
                if scope["type"] == "websocket":
                    scheme = scheme.replace("http", "ws")
                scope["scheme"] = scheme
        await self.app(scope, receive, send)
