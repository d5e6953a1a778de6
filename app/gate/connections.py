"""Connection limits for uvicorn: `uvicorn_options(settings.connection_limits())`.

    HEADER_TIMEOUT_SECONDS   the request line and headers must be complete this long after the
                             connection opens, or after the first byte of the next request on
                             a kept-alive connection; else the connection is closed
    KEEP_ALIVE_SECONDS       an idle connection is closed between requests (uvicorn's own)
    MAX_CONNECTIONS          past it, requests get uvicorn's plain 503 (its limit_concurrency)
    MAX_CONNECTIONS_PER_CLIENT
                             connections one address may have open; past it, a new one is
                             closed at once, so no one address can take MAX_CONNECTIONS
    BODY_TIMEOUT_SECONDS     in the app (app/gate/body_timeout.py), and here for a body that the
                             app answered without reading: the rest must arrive within it
    HTTP_PARSER              httptools (uvicorn's C parser, the default) or h11 (its
                             pure-Python one): the same limits over either
    EVENT_LOOP               uvloop (auto, where installed) or asyncio: either runs them
    QUOTA_REFUSAL_DELAY_SECONDS
                             how long the early 429 of a peer at its quota is held
    FORWARDED_ALLOW_IPS      the trusted proxies (app/gate/identity.py): their connections
                             carry many clients' requests, so they are not counted per
                             address nor refused early; each request's client is resolved
                             from its X-Forwarded-For instead

uvicorn itself times only the idle wait between requests, and a byte received stops that
clock: a client trickling a request head (or a body nobody reads) would keep its
connection as long as it liked. `ConnectionDeadlines` adds one deadline per connection for
that, and the early 429 of app/gate/quota.py, to either of uvicorn's HTTP/1.1 protocols.
`python -m app` serves with them; `uvicorn app.main:app` uses uvicorn's own flags instead
(--timeout-keep-alive, --limit-concurrency) and has no header timeout.

A connection's client is resolved once, when it opens: a peer that is not a trusted proxy
is its own client, and both rules here key on its address.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.gate.identity import TrustedProxies
from app.gate.liveness import LivenessSlots
from app.gate.quota import Refusal
from app.gate.send_deadline import SendDeadline

Wait = Literal["head", "unread body"]
MAX_HEAD_BYTES = 16 * 1024  # h11's bound on an incomplete request head (uvicorn's default)
EarlyRefusalHook = Callable[[str, bytes], Refusal | None]


class ConnectionDeadlines:
    """Closes a connection that keeps the server waiting for a request it never completes;
    mixed into one of uvicorn's HTTP/1.1 protocols (H11Deadlines, HttpToolsDeadlines), which
    says what the client owes (`_owed`).

    The deadline runs while the client owes a request head and uvicorn's keep-alive clock
    is not running (a new connection, or bytes of the next request have arrived), and while
    it is still sending a body that the app has already answered without reading. It is
    dropped once the head is complete, so a request's own time (a long stream) is never cut.
    """

    # What the protocol this is mixed into provides (uvicorn's names, both protocols).
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    client: tuple[str, int] | None
    server_state: Any
    logger: Any
    timeout_keep_alive_task: asyncio.TimerHandle | None

    head_timeout: ClassVar[float]
    body_timeout: ClassVar[float]
    # app/gate/quota.py's EarlyRefusal: a peer at its quota gets its 429 from the first bytes,
    # held this long first (a client that retries at once then retries once per delay).
    early_refusal: ClassVar[EarlyRefusalHook | None] = None
    refusal_delay: ClassVar[float] = 0.0
    # Open connections by peer address, shared by one server's connections; 0: no limit.
    max_per_peer: ClassVar[int] = 0
    open_by_peer: ClassVar[Counter[str]]
    # FORWARDED_ALLOW_IPS: peers whose connections are not one client's.
    proxies: ClassVar[TrustedProxies] = TrustedProxies()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._waiting_for: Wait | None = None
        self._first_bytes = True
        self._refusal: asyncio.TimerHandle | None = None  # a held 429, until it is written
        self._refused = False  # nothing more is read: the connection ends with its 429
        self._counted_peer: str | None = None  # in open_by_peer until the connection ends
        # The connection's one client: its peer's address, or None for a trusted proxy's
        # (or a peer without an address), whose requests each name their own.
        self._client: str | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        if self.client is not None and not self.proxies.trusts(self.client[0]):
            self._client = self.client[0]
        if self._over_peer_limit():
            return
        self._watch()

    def _over_peer_limit(self) -> bool:
        """Count the connection against its peer's MAX_CONNECTIONS_PER_CLIENT, or close it
        at once if the peer already has that many open (with no response: the client may
        not have sent a request yet). A trusted proxy's connections are everyone's."""
        limit, peer = self.max_per_peer, self._client
        if not limit or peer is None:
            return False
        if self.open_by_peer[peer] >= limit:
            self._refused = True
            self.logger.debug("closing a connection: %s has %d open", peer, limit)
            self.transport.close()
            return True
        self.open_by_peer[peer] += 1
        self._counted_peer = peer
        return False

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # the rest of a refused request (its body): never read
        if self._first_bytes:
            self._first_bytes = False
            if self._refused_early(data):
                return
        super().data_received(data)  # type: ignore[misc]
        self._watch()

    def _refused_early(self, data: bytes) -> bool:
        """Write the 429 for a peer at its quota and close, without parsing the request.
        Not for a trusted proxy's connections: their client is in a header."""
        refuse = type(self).early_refusal
        if refuse is None or self._client is None:
            return False
        answer = refuse(self._client, data)
        if answer is None:
            return False
        headers, body = answer
        head = [b"HTTP/1.1 429 Too Many Requests"]
        head += [name + b": " + value for name, value in self.server_state.default_headers]
        head += [name + b": " + value for name, value in headers]
        response = b"\r\n".join(head) + b"\r\n\r\n" + body
        self._refused = True
        self._arm(None)  # the hold below is the connection's only deadline now
        if self.refusal_delay > 0:
            # A timer, not a task: a held refusal costs the loop nothing until it is due.
            self._refusal = self.loop.call_later(self.refusal_delay, self._answer, response)
        else:
            self._answer(response)
        return True

    def _answer(self, response: bytes) -> None:
        """Write a refusal and close (unless the client has hung up meanwhile)."""
        self._refusal = None
        if not self.transport.is_closing():
            self.transport.write(response)
            self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._arm(None)
        if self._counted_peer is not None:
            self.open_by_peer[self._counted_peer] -= 1
            if self.open_by_peer[self._counted_peer] <= 0:
                del self.open_by_peer[self._counted_peer]
            self._counted_peer = None
        if self._refusal is not None:  # hung up (or shut down) while its 429 was held
            self._refusal.cancel()
            self._refusal = None
        super().connection_lost(exc)  # type: ignore[misc]

    def _owed(self) -> Wait | None:
        """What the client owes now, by the protocol's own state: the rest of a request's
        head, the rest of a body the app answered without reading, or nothing."""
        raise NotImplementedError

    def _watch(self) -> None:
        """Arm, keep or drop the deadline for what the connection now waits for."""
        owed = None if self.transport.is_closing() else self._owed()
        if owed == "head" and self.timeout_keep_alive_task is not None:
            owed = None  # between requests: uvicorn's keep-alive clock runs instead
        self._arm(owed)

    def _arm(self, waiting_for: Wait | None) -> None:
        if waiting_for == self._waiting_for:
            return  # the same wait goes on: its deadline stands, however many bytes arrive
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._waiting_for = waiting_for
        if waiting_for is not None:
            seconds = self.head_timeout if waiting_for == "head" else self.body_timeout
            self._deadline = self.loop.call_later(seconds, self._expire)

    def _expire(self) -> None:
        self._deadline = None
        self.logger.debug("closing a connection: request %s too slow", self._waiting_for)
        self.transport.close()


class H11Deadlines(ConnectionDeadlines, H11Protocol):
    """The deadlines over uvicorn's pure-Python protocol (h11)."""

    def _owed(self) -> Wait | None:
        state = self.conn.their_state
        if state is h11.IDLE:  # h11 leaves IDLE once a head is complete
            return "head"
        if state is h11.SEND_BODY and self.cycle.response_complete:
            return "unread body"
        return None


class HttpToolsDeadlines(ConnectionDeadlines, HttpToolsProtocol):
    """The deadlines over uvicorn's httptools protocol (llhttp, in C): it keeps no request
    state of its own to read, so the parser's callbacks note where the request is. llhttp
    does not bound a request head's size, and uvicorn keeps every header it reads: the
    head gets h11's bound here (MAX_HEAD_BYTES), so both parsers refuse the same heads."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_complete = False  # of the request being read
        self._message_complete = False
        self._head_bytes = 0  # received while its head was not complete

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._refused or self._head_complete or self.transport.is_closing():
            return  # a refused request's body is not a head to bound
        self._head_bytes += len(data)
        if self._head_bytes > MAX_HEAD_BYTES:
            self._arm(None)
            self.send_400_response("Request head too large.")

    def on_message_begin(self) -> None:
        self._head_complete = self._message_complete = False
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._head_complete = True
        self._head_bytes = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._message_complete = True
        super().on_message_complete()

    def _owed(self) -> Wait | None:
        if not self._head_complete:
            return "head"
        cycle = self.cycle  # None until a head is complete (and after a websocket upgrade)
        if not self._message_complete and cycle is not None and cycle.response_complete:
            return "unread body"
        return None


PROTOCOLS: dict[str, type[ConnectionDeadlines]] = {
    "httptools": HttpToolsDeadlines,
    "h11": H11Deadlines,
}


@dataclass(frozen=True)
class ConnectionLimits:
    """What the connections are held to; the defaults live in app/settings.py, which makes
    this (Settings.connection_limits())."""

    http_parser: Literal["httptools", "h11"]
    event_loop: str
    header_timeout_seconds: float
    body_timeout_seconds: float
    quota_refusal_delay_seconds: float
    max_connections_per_client: int
    send_timeout_seconds: float
    keep_alive_seconds: float
    max_connections: int | None
    proxies: TrustedProxies


def deadline_protocol(
    limits: ConnectionLimits, early_refusal: EarlyRefusalHook | None = None
) -> type[ConnectionDeadlines]:
    """The protocol of limits.http_parser with the timeouts of `limits` (uvicorn builds
    the protocol itself, one per connection, so they travel as class attributes)."""
    attributes = {
        "head_timeout": limits.header_timeout_seconds,
        "body_timeout": limits.body_timeout_seconds,
        "early_refusal": early_refusal,
        "refusal_delay": limits.quota_refusal_delay_seconds,
        "max_per_peer": limits.max_connections_per_client,
        "send_timeout": limits.send_timeout_seconds,
        "open_by_peer": Counter(),  # this server's own count
        "proxies": limits.proxies,
    }
    base = PROTOCOLS[limits.http_parser]
    return type(base.__name__, (SendDeadline, LivenessSlots, base), attributes)


def uvicorn_options(
    limits: ConnectionLimits, early_refusal: EarlyRefusalHook | None = None
) -> dict[str, Any]:
    """Keyword arguments of uvicorn.run / uvicorn.Config for the connection limits (and,
    given app/gate/quota.py's EarlyRefusal for the app, the 429 of a peer at its quota).
    uvicorn's own X-Forwarded-For handling is off: the app resolves each request's client
    by the same rule as the connections (app/gate/identity.py's middleware)."""
    return {
        "http": deadline_protocol(limits, early_refusal),
        "proxy_headers": False,
        "loop": limits.event_loop,
        "timeout_keep_alive": limits.keep_alive_seconds,
        "limit_concurrency": limits.max_connections,
    }
