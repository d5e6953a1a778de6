"""app/gate/send_deadline.py under a real uvicorn, through raw sockets with a small receive
buffer: a client that reads nothing of its response (a stream, or one large JSON answer)
is reset within SEND_TIMEOUT_SECONDS and a margin, and its job cancelled; a slow client
that keeps reading is not. Both of uvicorn's stacks, as in test_connections.py."""

from __future__ import annotations

import contextlib
import fcntl
import socket
import struct
import termios
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from fastapi import FastAPI
from pydantic import ValidationError

from app.gate.connections import uvicorn_options
from app.gate.send_deadline import WRITE_BUFFER_BYTES, SendDeadline
from app.main import create_app
from app.settings import Settings
from tests.app.support import STACKS, running_server, wait_for

TIMEOUT = 0.5  # SEND_TIMEOUT_SECONDS of the server under test
MARGIN = 2.0  # the reset comes within TIMEOUT + MARGIN of the client's last read
# The server sees a read only when the freed window lets it write again, so its clock may
# have started a little before the client's last read of bytes already delivered: the
# reset never comes much sooner than TIMEOUT after that read (under load, 0.39 s of 0.5).
EARLIEST = TIMEOUT * 0.5
TCP_CLOSE = 7  # tcpi_state of a socket the peer has reset (linux/tcp_states.h)

pytestmark = pytest.mark.skipif(not hasattr(socket, "TCP_INFO"), reason="needs Linux TCP_INFO")


@pytest.fixture(scope="module", params=list(STACKS))
def server(settings: Settings, request: pytest.FixtureRequest) -> Iterator[tuple[Any, FastAPI]]:
    """((host, port), app) of the app under uvicorn, SEND_TIMEOUT_SECONDS 0.5."""
    changed = Settings(
        **{
            **settings.model_dump(),
            **STACKS[request.param],
            "access_log": False,
            "send_timeout_seconds": TIMEOUT,
            "max_length": 10**6,
        }
    )
    application = create_app(changed)
    with running_server(application, **uvicorn_options(changed.connection_limits())) as url:
        parts = urlsplit(url)
        yield (parts.hostname, parts.port), application


def small_window_socket(address: tuple[str, int]) -> socket.socket:
    """A connected socket whose receive buffer (so the server's view of the window) is small."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(address)
    return sock


def tcp_state(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]


def queued(sock: socket.socket) -> int:
    """Bytes received by the kernel and not yet read (FIONREAD)."""
    return struct.unpack("i", fcntl.ioctl(sock, termios.FIONREAD, b"\0\0\0\0"))[0]


def until_reset(sock: socket.socket, limit: float) -> tuple[float | None, float]:
    """Read nothing; → (seconds from the last byte the kernel took in to the reset, or
    None if still open after `limit`; when that last byte came, by time.monotonic)."""
    started = last_growth = time.monotonic()
    seen = -1
    while time.monotonic() - started < limit:
        if tcp_state(sock) == TCP_CLOSE:
            return time.monotonic() - last_growth, last_growth
        now_queued = queued(sock)
        if now_queued != seen:
            seen, last_growth = now_queued, time.monotonic()
        time.sleep(0.02)
    return None, last_growth


def request_head(method: str, path: str, *headers: str) -> bytes:
    return "\r\n".join([f"{method} {path} HTTP/1.1", "Host: test", *headers, "", ""]).encode()


def test_a_stream_nobody_reads_is_reset_and_its_job_cancelled(
    server: tuple[Any, FastAPI],
) -> None:
    address, application = server
    service = application.state.service
    with small_window_socket(address) as sock:
        # logprobs: ~150 bytes an event, so the buffers fill within a moment.
        sock.sendall(request_head("GET", "/generate/stream?length=1000000&logprobs=5"))
        assert wait_for(lambda: service.active == 1)
        after_last_read, last = until_reset(sock, limit=TIMEOUT + MARGIN + 10)
        assert after_last_read is not None, "still connected"
        assert EARLIEST < after_last_read < TIMEOUT + MARGIN
    # The reset reached the app as a hang-up: the generation is cancelled.
    assert wait_for(lambda: service.active == 0, limit=2.0)
    assert time.monotonic() - last < TIMEOUT + MARGIN + 2.0


def test_one_large_answer_nobody_reads_is_reset(server: tuple[Any, FastAPI]) -> None:
    """A response written as one message (its whole body at once, past the write
    buffer's bound): the connection does not outlive the deadline waiting to send it."""
    address, _ = server
    body = b'{"length": 20000, "logprobs": 5, "seed": 1}'
    head = request_head(
        "POST", "/generate", "Content-Type: application/json", f"Content-Length: {len(body)}"
    )
    with small_window_socket(address) as sock:
        sock.sendall(head + body)
        after_last_read, _ = until_reset(sock, limit=TIMEOUT + MARGIN + 15)
    assert after_last_read is not None, "still connected"
    assert EARLIEST < after_last_read < TIMEOUT + MARGIN


def test_a_slow_reader_that_keeps_reading_is_not_cut(server: tuple[Any, FastAPI]) -> None:
    """Reading 4 KiB every 50 ms (slower than the stream is made, so the server pauses
    and resumes over and over) for 4 × SEND_TIMEOUT_SECONDS, then to the end."""
    address, _ = server
    with small_window_socket(address) as sock:
        sock.sendall(request_head("GET", "/generate/stream?length=3000&logprobs=5"))
        received = b""
        started = time.monotonic()
        while time.monotonic() - started < 4 * TIMEOUT:
            chunk = sock.recv(4096)
            assert chunk, "closed by the server"
            received += chunk
            time.sleep(0.05)
        assert tcp_state(sock) != TCP_CLOSE
        assert len(received) > 4 * WRITE_BUFFER_BYTES // 4  # it was read, and sent on
        sock.settimeout(20)
        while not received.endswith(b"\r\n0\r\n\r\n"):  # the chunked body's end
            chunk = sock.recv(65536)
            assert chunk, "closed before the stream's end"
            received += chunk
    assert b"event: done" in received


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
def test_send_timeout_must_be_positive_and_finite(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("SEND_TIMEOUT_SECONDS", value)
    with pytest.raises(ValidationError, match="send_timeout_seconds"):
        Settings()


def test_the_send_timeout_reaches_the_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEND_TIMEOUT_SECONDS", "12.5")
    protocol = uvicorn_options(Settings().connection_limits())["http"]
    assert issubclass(protocol, SendDeadline) and protocol.send_timeout == 12.5
    with contextlib.suppress(KeyError):
        monkeypatch.delenv("SEND_TIMEOUT_SECONDS")
    assert uvicorn_options(Settings().connection_limits())["http"].send_timeout == 30.0
