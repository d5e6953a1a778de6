"""SEND_TIMEOUT_SECONDS: a client that reads nothing of its response is disconnected.

Each connection's unsent bytes are bounded by its transport's write buffer: past
WRITE_BUFFER_BYTES the transport pauses the protocol, and uvicorn's send() then waits
before the app's next message, so a stream stops producing events for a client that
does not take them (a response sent as one message, /score's, is the one thing that may
go past the bound, by that message). A paused transport, or a finished response that
still has bytes waiting, is watched: if the client takes none of them for
SEND_TIMEOUT_SECONDS the connection is reset. The reset frees the bytes waiting in the
process and in the kernel, and the app sees the client leave (http.disconnect), so a
request still running is cancelled (app/gate/hang_up.py).

Without it, nothing ends such a connection: uvicorn's keep-alive close waits for the
buffer to drain, and a client that never reads keeps it, and the response, forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Any, ClassVar

# The transport's high-water mark (asyncio's and uvloop's default, set here so that the
# bound does not depend on the event loop); it resumes the app below a quarter of it.
WRITE_BUFFER_BYTES = 64 * 1024
# SO_LINGER on, 0 s: close() resets the connection and drops the kernel's unsent bytes,
# instead of keeping them (and the socket) for a peer that will not take them.
RESET_ON_CLOSE = struct.pack("ii", 1, 0)


class SendDeadline:
    """Mixed into one of uvicorn's HTTP/1.1 protocols (before it, in app/gate/connections.py's
    `deadline_protocol`): resets a connection whose client has taken none of the bytes
    waiting for it for `send_timeout` seconds.

    The wait is watched while the app cannot write (the transport is paused) or has nothing
    more to write (the response is complete): then every byte that leaves the buffer is one
    the client took, so a buffer that has not shrunk means a client that has not read. While
    a response is still being written, a growing buffer says nothing, and it is not watched
    (its bound pauses it soon enough).
    """

    # What the protocol this is mixed into provides (uvicorn's names, both protocols).
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    logger: Any
    cycle: Any  # the request-response cycle in progress (None before the first request)

    send_timeout: ClassVar[float]  # SEND_TIMEOUT_SECONDS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._write_paused = False
        self._send_check: asyncio.TimerHandle | None = None
        self._unsent = 0  # bytes waiting at the last look
        self._last_taken = 0.0  # loop time the client last took some

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        transport.set_write_buffer_limits(high=WRITE_BUFFER_BYTES)

    def pause_writing(self) -> None:
        super().pause_writing()  # type: ignore[misc]
        self._write_paused = True
        self._watch_unsent()

    def resume_writing(self) -> None:
        super().resume_writing()  # type: ignore[misc]
        self._write_paused = False
        if self._responding():
            self._stop_watch()  # the app writes again: the next pause watches anew

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._watch_unsent()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_watch()
        super().connection_lost(exc)  # type: ignore[misc]

    def _responding(self) -> bool:
        """Whether the app is still writing a response on this connection."""
        return self.cycle is not None and not self.cycle.response_complete

    def _watch_unsent(self) -> None:
        if self._send_check is not None or self.transport.get_write_buffer_size() == 0:
            return
        self._unsent = self.transport.get_write_buffer_size()
        self._last_taken = self.loop.time()
        self._schedule_check()

    def _schedule_check(self) -> None:
        # A look every quarter of the timeout: a client is reset at most that much after
        # the deadline since it last read.
        interval = min(self.send_timeout / 4, 1.0)
        self._send_check = self.loop.call_later(interval, self._check_unsent)

    def _stop_watch(self) -> None:
        if self._send_check is not None:
            self._send_check.cancel()
            self._send_check = None

    def _check_unsent(self) -> None:
        self._send_check = None
        unsent = self.transport.get_write_buffer_size()
        if unsent == 0 or (not self._write_paused and self._responding()):
            return  # all taken, or the app writes again (a pipelined request's response)
        now = self.loop.time()
        if unsent < self._unsent:
            self._last_taken = now
        self._unsent = unsent
        if now - self._last_taken < self.send_timeout:
            self._schedule_check()
            return
        self.logger.debug(
            "resetting a connection: its client read nothing for %gs", self.send_timeout
        )
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_ON_CLOSE)
        self.transport.abort()
