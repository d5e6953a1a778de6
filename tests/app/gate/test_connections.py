"""app/gate/connections.py and app/gate/body_timeout.py under a real uvicorn, through raw sockets:
slow heads and bodies are cut, idle connections closed, open connections bounded, and a
stream longer than every timeout runs to its end. Timeouts are 0.5 s here. Every test runs
over both of uvicorn's HTTP/1.1 protocols (HTTP_PARSER: httptools and h11) and both event
loops (EVENT_LOOP: uvloop and asyncio), paired: the default stack and the pure-Python one."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from pydantic import ValidationError

from app.gate.connections import H11Deadlines, HttpToolsDeadlines, uvicorn_options
from app.gate.quota import EarlyRefusal, Refusal
from app.main import create_app, engine_of
from app.settings import Settings
from tests.app.support import STACKS, running_server

TIMEOUT = 0.5  # every timeout of the server under test
LIMIT = 3.0  # how long a test waits for the server to close a connection
FAST = {
    "header_timeout_seconds": TIMEOUT,
    "body_timeout_seconds": TIMEOUT,
    "keep_alive_seconds": TIMEOUT,
}
Parse = Callable[[str], list[tuple[str, Any]]]


@contextlib.contextmanager
def serving(settings: Settings, **changes: Any) -> Iterator[tuple[str, int]]:
    """(host, port) of the app under uvicorn with `changes` to the settings (the model
    loaded by the app, so that its engine and limits follow them too)."""
    changed = Settings(**{**settings.model_dump(), "access_log": False, **changes})
    with running_server(create_app(changed), **uvicorn_options(changed.connection_limits())) as url:
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        yield parts.hostname, parts.port


@pytest.fixture(scope="module", params=list(STACKS))
def stack(request: pytest.FixtureRequest) -> dict[str, str]:
    """The settings of an HTTP parser and an event loop."""
    return STACKS[request.param]


@pytest.fixture(scope="module")
def address(settings: Settings, stack: dict[str, str]) -> Iterator[tuple[str, int]]:
    with serving(settings, **stack, **FAST) as host_port:
        yield host_port


def watch(
    sock: socket.socket, trickle: bytes = b"", interval: float = 0.1
) -> tuple[float | None, bytes]:
    """Send `trickle` a byte every `interval` while reading. Returns the seconds until the
    server closed the connection (None: still open after LIMIT) and what it sent."""
    started = time.monotonic()
    received = b""
    pending = iter(trickle)
    sock.settimeout(interval)
    while time.monotonic() - started < LIMIT:
        byte = next(pending, None)
        try:
            if byte is not None:
                sock.sendall(bytes([byte]))
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        if not data:
            return time.monotonic() - started, received
        received += data
    return None, received


def request_head(method: str, path: str, *headers: str) -> bytes:
    return "\r\n".join([f"{method} {path} HTTP/1.1", "Host: test", *headers, "", ""]).encode()


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def test_an_idle_new_connection_is_closed(address: tuple[str, int]) -> None:
    with socket.create_connection(address) as sock:
        closed_after, received = watch(sock)
    assert closed_after is not None and TIMEOUT * 0.8 < closed_after < TIMEOUT + 1
    assert received == b""


def test_a_trickled_head_is_cut(address: tuple[str, int]) -> None:
    head = request_head("GET", "/health", "X-Padding: " + "a" * 40)
    with socket.create_connection(address) as sock:
        sock.sendall(head[:20])
        closed_after, received = watch(sock, head[20:])
    assert closed_after is not None and closed_after < TIMEOUT + 1
    assert received == b""  # never answered: its head was not complete


def test_a_slow_head_within_the_timeout_is_served(address: tuple[str, int]) -> None:
    head = request_head("GET", "/health", "Connection: close")
    with socket.create_connection(address) as sock:
        for start in range(0, len(head), 10):  # ~0.25 s in all
            sock.sendall(head[start : start + 10])
            time.sleep(0.05)
        closed_after, received = watch(sock)
    assert status_of(received) == 200 and closed_after is not None


def test_an_idle_kept_alive_connection_is_closed(address: tuple[str, int]) -> None:
    with socket.create_connection(address) as sock:
        # Two pipelined requests, then a third after a pause shorter than the timeouts.
        sock.sendall(request_head("GET", "/health") * 2)
        time.sleep(TIMEOUT / 2)
        sock.sendall(request_head("GET", "/health"))
        closed_after, received = watch(sock)
    assert received.count(b"HTTP/1.1 200 OK") == 3
    assert closed_after is not None and closed_after < TIMEOUT + 1


@pytest.mark.parametrize("path", ["/generate", "/generate/stream", "/v1/completions"])
@pytest.mark.parametrize("sent_at_once", [0, 12], ids=["trickled", "partly-read"])
def test_a_trickled_body_gets_408_and_the_connection_closed(
    address: tuple[str, int], path: str, sent_at_once: int
) -> None:
    body = json.dumps({"length": 5, "prime": "a" * 40}).encode()
    head = request_head(
        "POST", path, "Content-Type: application/json", f"Content-Length: {len(body)}"
    )
    with socket.create_connection(address) as sock:
        sock.sendall(head + body[:sent_at_once])
        started = time.monotonic()
        closed_after, received = watch(sock, body[sent_at_once:])
    assert status_of(received) == 408, received
    assert b"connection: close" in received.lower()
    assert b"BODY_TIMEOUT_SECONDS" in received
    if path.startswith("/v1/"):
        assert b'"error"' in received  # OpenAI's error shape
    assert closed_after is not None and closed_after < TIMEOUT + 1
    assert time.monotonic() - started > TIMEOUT * 0.8


def test_a_body_the_app_does_not_read_cannot_hold_the_connection(
    address: tuple[str, int],
) -> None:
    head = request_head("GET", "/health", "Content-Length: 1000")
    with socket.create_connection(address) as sock:
        sock.sendall(head)
        closed_after, received = watch(sock, b"x" * 1000)
    assert status_of(received) == 200  # answered at once, without reading the body
    assert closed_after is not None and closed_after < TIMEOUT + 1


def test_an_endless_request_head_gets_400_and_the_connection_closed(
    address: tuple[str, int],
) -> None:
    head = request_head("GET", "/health")[:-2]  # the head not ended: headers keep coming
    with socket.create_connection(address) as sock:
        sock.sendall(head)
        sent = 0
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            while sent < 1 << 20:  # 1 MiB of headers, far past the 16 KiB a head may take
                sock.sendall(b"X-Padding: " + b"a" * 1000 + b"\r\n")
                sent += 1013
        closed_after, received = watch(sock)
    assert status_of(received) == 400, received
    assert closed_after is not None and closed_after < TIMEOUT


def test_past_max_connections_requests_get_503(settings: Settings, stack: dict[str, str]) -> None:
    limits = {"max_connections": 3, "header_timeout_seconds": 30.0}
    with serving(settings, **stack, **limits) as address:
        # Two clients in the middle of a request (their heads not yet complete)...
        waiting = [socket.create_connection(address) for _ in range(2)]
        for sock in waiting:
            sock.sendall(b"GET /health HTTP/1.1\r\n")
        # ...so a third connection is the limit's third: its request gets 503.
        with socket.create_connection(address) as sock:
            sock.sendall(request_head("GET", "/health"))
            _, received = watch(sock)
        assert status_of(received) == 503 and b"Service Unavailable" in received
        for sock in waiting:
            sock.close()
        deadline = time.monotonic() + LIMIT
        while True:  # until the server has seen the two go
            status = httpx.get(f"http://{address[0]}:{address[1]}/health").status_code
            if status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert status == 200


def test_one_address_cannot_take_every_connection(
    settings: Settings, stack: dict[str, str]
) -> None:
    """MAX_CONNECTIONS_PER_CLIENT 3, MAX_CONNECTIONS 10: 127.0.0.5's fourth connection is
    closed at once, unanswered, while other addresses are served; once one of its three
    closes it may open another; 127.0.0.1 (a trusted proxy: everyone's connections) is
    not counted; the counts empty when the connections go."""
    limits = {
        "max_connections": 10,
        "max_connections_per_client": 3,
        "header_timeout_seconds": 30.0,
    }
    changed = Settings(**{**settings.model_dump(), "access_log": False, **stack, **limits})
    options = uvicorn_options(changed.connection_limits())
    counts = options["http"].open_by_peer
    with running_server(create_app(changed), **options) as url:
        parts = urlsplit(url)
        address = (parts.hostname, parts.port)

        def connect(source: str) -> socket.socket:
            return socket.create_connection(address, source_address=(source, 0))

        def health(source: str) -> int:
            with connect(source) as sock:
                sock.sendall(request_head("GET", "/health", "Connection: close"))
                return status_of(watch(sock)[1])

        idle = [connect("127.0.0.5") for _ in range(3)]
        try:
            deadline = time.monotonic() + LIMIT
            while counts["127.0.0.5"] < 3 and time.monotonic() < deadline:
                time.sleep(0.01)  # the server has taken all three
            with connect("127.0.0.5") as fourth:
                fourth.sendall(request_head("GET", "/health", "Connection: close"))
                closed_after, received = watch(fourth)
            assert closed_after is not None and closed_after < TIMEOUT and received == b""
            assert health("127.0.0.6") == 200  # room left for other addresses
            proxied = [connect("127.0.0.1") for _ in range(4)]
            assert health("127.0.0.1") == 200  # its fifth: not counted
            for sock in proxied:
                sock.close()
            idle.pop().close()
            deadline = time.monotonic() + LIMIT
            while counts["127.0.0.5"] > 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert health("127.0.0.5") == 200
        finally:
            for sock in idle:
                sock.close()
        deadline = time.monotonic() + LIMIT
        while counts and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not counts


def test_a_stream_longer_than_every_timeout_is_not_cut(
    settings: Settings, stack: dict[str, str], sse: Parse
) -> None:
    """A stream read for 3x the timeouts, and one queued (silent) behind it meanwhile."""
    limits = {"max_active": 1, "max_length": 10**6, **stack}
    with serving(settings, **limits, **FAST) as (host, port):
        base_url = f"http://{host}:{port}"
        queued: dict[str, Any] = {}

        def post_stream() -> None:
            started = time.monotonic()
            with httpx.Client(base_url=base_url, timeout=20) as client:
                response = client.post("/generate/stream", json={"length": 2000})
            queued.update(events=sse(response.text), seconds=time.monotonic() - started)

        with (
            httpx.Client(base_url=base_url, timeout=20) as client,
            client.stream("GET", "/generate/stream", params={"length": 10**6}) as running,
        ):
            chunks = running.iter_bytes()
            next(chunks)
            waiter = threading.Thread(target=post_stream)
            waiter.start()  # the one row is taken: this one waits, silent
            started = time.monotonic()
            received = 0
            while time.monotonic() - started < 3 * TIMEOUT:
                received += len(next(chunks))  # raises if the server cut the stream
            assert received > 0
        # Hanging up freed the row: the waiting stream runs to its end.
        waiter.join(20)
    events = queued["events"]
    assert events[-1][0] == "done" and events[-1][1]["stats"]["chars"] == 2000
    assert queued["seconds"] > 3 * TIMEOUT


@pytest.mark.parametrize(
    "field", ["header_timeout_seconds", "body_timeout_seconds", "keep_alive_seconds"]
)
@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
def test_timeouts_must_be_positive_and_finite(
    monkeypatch: pytest.MonkeyPatch, field: str, value: str
) -> None:
    monkeypatch.setenv(field.upper(), value)
    with pytest.raises(ValidationError, match=field):
        Settings()


@pytest.mark.parametrize("value", ["0", "-5", "1.5", "many"])
def test_max_connections_must_be_a_positive_integer(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("MAX_CONNECTIONS", value)
    with pytest.raises(ValidationError, match="max_connections"):
        Settings()


@pytest.mark.parametrize("value", ["-1", "1.5", "many", ""])
def test_max_connections_per_client_is_a_count(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("MAX_CONNECTIONS_PER_CLIENT", value)
    with pytest.raises(ValidationError, match="max_connections_per_client"):
        Settings()


def test_max_connections_per_client_defaults_and_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().max_connections_per_client == 512  # a quarter of MAX_CONNECTIONS
    monkeypatch.setenv("MAX_CONNECTIONS_PER_CLIENT", "0")  # no limit
    assert uvicorn_options(Settings().connection_limits())["http"].max_per_peer == 0


@pytest.mark.parametrize("field", ["http_parser", "event_loop"])
@pytest.mark.parametrize("value", ["", "HTTPTOOLS2", "tokio", "0"])
def test_http_parser_and_event_loop_must_be_known_ones(
    monkeypatch: pytest.MonkeyPatch, field: str, value: str
) -> None:
    monkeypatch.setenv(field.upper(), value)
    with pytest.raises(ValidationError, match=field):
        Settings()


def test_the_event_loop_reaches_uvicorn(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (
        uvicorn_options(Settings().connection_limits())["loop"] == "auto"
    )  # uvloop where installed
    monkeypatch.setenv("EVENT_LOOP", "asyncio")
    assert uvicorn_options(Settings().connection_limits())["loop"] == "asyncio"


@pytest.mark.parametrize(
    ("value", "protocol"), [("httptools", HttpToolsDeadlines), ("h11", H11Deadlines)]
)
def test_http_parser_picks_the_protocol(
    monkeypatch: pytest.MonkeyPatch, value: str, protocol: type
) -> None:
    monkeypatch.setenv("HTTP_PARSER", value)
    assert issubclass(uvicorn_options(Settings().connection_limits())["http"], protocol)


def test_the_options_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADER_TIMEOUT_SECONDS", "2.5")
    monkeypatch.setenv("BODY_TIMEOUT_SECONDS", "7")
    monkeypatch.setenv("KEEP_ALIVE_SECONDS", "65")
    monkeypatch.setenv("MAX_CONNECTIONS", "100")
    monkeypatch.setenv("MAX_CONNECTIONS_PER_CLIENT", "20")
    options = uvicorn_options(Settings().connection_limits())
    assert (options["http"].head_timeout, options["http"].body_timeout) == (2.5, 7.0)
    assert (options["timeout_keep_alive"], options["limit_concurrency"]) == (65.0, 100)
    assert options["http"].max_per_peer == 20
    assert (
        options["http"].open_by_peer
        is not uvicorn_options(Settings().connection_limits())["http"].open_by_peer
    )


def test_the_default_connection_limit_leaves_room_for_the_engine_queue() -> None:
    # Past MAX_ACTIVE + MAX_QUEUE the engine answers 503 with Retry-After; the connection
    # limit's bare 503 must not come first.
    defaults = Settings.model_construct()
    assert defaults.max_connections > defaults.max_active + defaults.max_queue


def test_a_peer_at_its_quota_gets_its_429_from_the_connection(
    settings: Settings, stack: dict[str, str]
) -> None:
    """One request per client, and a stream running from 127.0.0.5 and one from 127.0.0.1:
    127.0.0.5's next requests are refused by the protocol from their first bytes (their
    bodies are never sent: the app never sees them), its /health still answers and other
    clients are served; 127.0.0.1, a trusted proxy by uvicorn's default, is left to the
    app's middleware, which refuses it too."""
    changed = Settings(**{**settings.model_dump(), "access_log": False})
    limits = {"max_requests_per_client": 1, "max_length": 10**6, **stack}
    changed = changed.model_copy(update=limits)
    app = create_app(changed)
    refusals: list[str] = []
    early = EarlyRefusal(lambda: engine_of(app))

    def spy(client: str, data: bytes) -> Refusal | None:
        answer = early(client, data)
        if answer is not None:
            refusals.append(client)
        return answer

    def answer(source: str, raw: bytes) -> tuple[float | None, bytes]:
        with socket.create_connection(address, source_address=(source, 0)) as sock:
            sock.sendall(raw)
            return watch(sock)

    body = json.dumps({"length": 10**6}).encode()
    json_head = ("Content-Type: application/json", f"Content-Length: {len(body)}")
    with running_server(app, **uvicorn_options(changed.connection_limits(), spy)) as url:
        parts = urlsplit(url)
        address = (parts.hostname, parts.port)
        held = []
        for source in ("127.0.0.5", "127.0.0.1"):
            sock = socket.create_connection(address, source_address=(source, 0))
            held.append(sock)
            sock.sendall(request_head("POST", "/generate/stream", *json_head) + body)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")  # the stream runs
        try:
            for path in ("/generate", "/v1/completions"):
                # A body is promised but never sent: only an early answer can come.
                closed_after, received = answer(
                    "127.0.0.5", request_head("POST", path, "Content-Length: 100")
                )
                assert status_of(received) == 429, received
                assert closed_after is not None and closed_after < TIMEOUT
                lowered = received.lower()
                assert b"retry-after: 1" in lowered and b"connection: close" in lowered
                assert b"date: " in lowered  # uvicorn's default headers, as on every answer
                assert (b"rate_limit_exceeded" in received) == path.startswith("/v1/")
            assert refusals == ["127.0.0.5", "127.0.0.5"]
            health = answer("127.0.0.5", request_head("GET", "/health", "Connection: close"))
            assert status_of(health[1]) == 200
            small = request_head("POST", "/generate", *json_head[:1], "Content-Length: 2")
            assert status_of(answer("127.0.0.6", small + b"{}")[1]) == 200
            assert status_of(answer("127.0.0.1", small + b"{}")[1]) == 429
            assert refusals == ["127.0.0.5", "127.0.0.5"]  # that one was the middleware's
        finally:
            for sock in held:
                sock.close()


def test_a_held_refusal_holds_up_no_one_else(settings: Settings, stack: dict[str, str]) -> None:
    """QUOTA_REFUSAL_DELAY_SECONDS: a peer at its quota gets its 429 after the delay, from
    the connection (127.0.0.5) and from the middleware (127.0.0.1, a trusted proxy). While
    it is held, the body sent after the head (past the bound on a head) is not read, other
    clients and the peer's own /health are answered at once, and a peer that hangs up
    leaves nothing behind."""
    delay = 0.6
    limits = {"max_requests_per_client": 1, "max_length": 10**6, **stack}
    changed = Settings(**{**settings.model_dump(), "access_log": False}).model_copy(
        update={**limits, "quota_refusal_delay_seconds": delay}
    )
    app = create_app(changed)
    early = EarlyRefusal(lambda: engine_of(app))
    stream = json.dumps({"length": 10**6}).encode()
    json_head = ("Content-Type: application/json", f"Content-Length: {len(stream)}")
    with running_server(app, **uvicorn_options(changed.connection_limits(), early)) as url:
        parts = urlsplit(url)
        address = (parts.hostname, parts.port)

        def connect(source: str) -> socket.socket:
            return socket.create_connection(address, source_address=(source, 0))

        def quick(source: str, path: str) -> tuple[float, int]:
            started = time.monotonic()
            with connect(source) as sock:
                sock.sendall(request_head("GET", path, "Connection: close"))
                _, received = watch(sock)
            return time.monotonic() - started, status_of(received)

        held = [connect(source) for source in ("127.0.0.5", "127.0.0.1")]
        try:
            for sock in held:
                sock.sendall(request_head("POST", "/generate/stream", *json_head) + stream)
                assert sock.recv(65536).startswith(b"HTTP/1.1 200")  # the stream runs
            big = 20_000  # more than the 16 KiB a head may take
            refused = [connect(source) for source in ("127.0.0.5", "127.0.0.1")]
            sent = time.monotonic()
            for sock in refused:
                sock.sendall(request_head("POST", "/generate", f"Content-Length: {big}"))
                sock.sendall(b"x" * big)
            with connect("127.0.0.5") as gone:  # hangs up while its refusal is held
                gone.sendall(request_head("POST", "/score", "Content-Length: 5"))
            for source, path in (("127.0.0.6", "/model"), ("127.0.0.5", "/health")):
                seconds, status = quick(source, path)
                assert status == 200 and seconds < delay / 2, (source, path, seconds)
            for sock in refused:
                closed_after, received = watch(sock)
                sock.close()
                assert closed_after is not None and status_of(received) == 429, received
                # libuv times in whole milliseconds from the loop's cached clock: a hold
                # may end a millisecond or so early by this process's clock.
                assert delay - 0.05 <= time.monotonic() - sent < delay + LIMIT
            assert quick("127.0.0.6", "/health")[1] == 200
        finally:
            for sock in held:
                sock.close()


def test_a_peer_outside_a_trusted_network_keeps_its_limits(
    settings: Settings, stack: dict[str, str]
) -> None:
    """FORWARDED_ALLOW_IPS 127.0.0.2/31: the network's peers (127.0.0.2, .3) are proxies,
    every other peer is its own client. 127.0.0.5, outside it, has its third connection
    closed (MAX_CONNECTIONS_PER_CLIENT 2) and, with its one request running, its 429 from
    the request line alone; 127.0.0.2 opens more connections than that, and each of its
    requests is held to the quota of the client its X-Forwarded-For names (127.0.0.5's is
    used up)."""
    limits = {
        "forwarded_allow_ips": ("127.0.0.2/31",),
        "max_connections_per_client": 2,
        "max_requests_per_client": 1,
        "max_length": 10**6,
        "header_timeout_seconds": 30.0,
        **stack,
    }
    changed = Settings(**{**settings.model_dump(), "access_log": False, **limits})
    app = create_app(changed)
    options = uvicorn_options(changed.connection_limits(), EarlyRefusal(lambda: engine_of(app)))
    body = json.dumps({"length": 10**6}).encode()
    json_head = ("Content-Type: application/json", f"Content-Length: {len(body)}")
    with running_server(app, **options) as url:
        parts = urlsplit(url)
        address = (parts.hostname, parts.port)

        def connect(source: str) -> socket.socket:
            return socket.create_connection(address, source_address=(source, 0))

        def answer(source: str, raw: bytes) -> bytes:
            with connect(source) as sock:
                sock.sendall(raw)
                return watch(sock)[1]

        running = connect("127.0.0.5")
        idle = connect("127.0.0.5")
        try:
            running.sendall(request_head("POST", "/generate/stream", *json_head) + body)
            assert running.recv(65536).startswith(b"HTTP/1.1 200")  # its one request runs
            with connect("127.0.0.5") as third:
                closed_after, received = watch(third)
            assert closed_after is not None and closed_after < TIMEOUT and received == b""
            idle.close()
            deadline = time.monotonic() + LIMIT
            while options["http"].open_by_peer["127.0.0.5"] > 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            # Only the request line: no answer could come but the connection's own.
            early = answer("127.0.0.5", b"POST /generate HTTP/1.1\r\n")
            assert status_of(early) == 429, early
            proxied = [connect("127.0.0.2") for _ in range(3)]
            try:
                for sock, client in zip(
                    proxied, ("127.0.0.5", "127.0.0.9", "127.0.0.10"), strict=True
                ):
                    small = ("Content-Length: 2", f"X-Forwarded-For: {client}")
                    sock.sendall(request_head("POST", "/generate", *json_head[:1], *small) + b"{}")
                statuses = [status_of(watch(sock)[1]) for sock in proxied]
            finally:
                for sock in proxied:
                    sock.close()
            assert statuses == [429, 200, 200]
            assert "127.0.0.2" not in options["http"].open_by_peer
        finally:
            running.close()
            idle.close()
