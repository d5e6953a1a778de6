"""The hostile clients of benchmarks/hostile_load.py: each kind of attack a loop until told
to stop, from an address of its own, tallying what the server answered. `attack()` runs
them all in a process of their own, as they would run on machines of their own.
"""

from __future__ import annotations

import asyncio
import collections
import fcntl
import json
import random
import socket
import struct
import termios
import time
from pathlib import Path
from typing import Any

ATTACKERS = [f"127.0.0.{n}" for n in range(66, 72)]  # one address per kind of attack
SCORE_BURST = "127.0.0.80"  # the score burst's own address
REGEX_FLOOD = "127.0.0.81"  # the regex-compile flood's own address
NEVER_READ = "127.0.0.82"  # the clients that never read, at their own address
TCP_ESTABLISHED, TCP_CLOSE = 1, 7  # struct tcp_info's first byte, tcpi_state (Linux)


async def request(
    port: int, raw: bytes, source: str, read: bool = True, timeout: float = 30.0
) -> int | None:
    """Send raw bytes from `source`; → the status code (None if the connection failed)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    except OSError:
        return None
    try:
        writer.write(raw)
        await writer.drain()
        if not read:
            return None
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        return int(head.split(b" ", 2)[1])
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
        return None
    finally:
        writer.close()


def post(path: str, body: bytes, method: bytes = b"POST") -> bytes:
    return (
        method + b" " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: "
        b"application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
    )


class Hostile:
    """The hostile clients, each a loop until `stop` is set; statuses are tallied."""

    def __init__(self, port: int, vocabulary: list[str], server: int = 0):
        self.port = port
        self.server = server  # the server's process id, for its RSS (0: not known)
        self.vocabulary = [c for c in vocabulary if c not in '"\\'] or ["a"]
        self.stop = asyncio.Event()
        self.statuses: collections.Counter[str] = collections.Counter()
        # Figures of the attacks that measure the server: name → values (never_read).
        self.figures: dict[str, list[float]] = collections.defaultdict(list)
        self.rng = random.Random(0)

    def tally(self, kind: str, status: int | str | None) -> None:
        self.statuses[f"{kind} {status if status is not None else 'closed'}"] += 1

    async def fields(self) -> None:
        bodies = [
            b'{"prime": "a", "length": 5, "top_k": 9223372036854775808}',
            b'{"prime": "a", "length": -1}',
            b'{"prime": "a", "temperature": NaN}',
            b'{"prime": "a", "temperature": 1e999}',
            b'{"prime": "a", "top_p": "lots"}',
            b'{"prime": "\\ud800"}',
            b'{"prime": "a", "regex": "(a|b)*a(a|b){40}"}',
            b'{"prime": "a", "stop": ["a","b","c","d","e"]}',
            b'{"prime": "a", "logit_bias": {"a": 1e308}}',
            b'{"prime": 12345}',
            b"\xff\xfe\xfd",
            b"[" * 5000,
        ]
        while not self.stop.is_set():
            body = self.rng.choice(bodies)
            path = self.rng.choice(["/generate", "/generate/stream", "/score"])
            self.tally("fields", await request(self.port, post(path, body), ATTACKERS[0]))
            await asyncio.sleep(0.01)

    async def primes(self) -> None:
        while not self.stop.is_set():
            burst = []
            for _ in range(16):
                prime = "".join(self.rng.choices(self.vocabulary, k=2000))
                body = json.dumps({"prime": prime, "length": 1}).encode()
                burst.append(request(self.port, post("/generate", body), ATTACKERS[1], timeout=120))
            for status in await asyncio.gather(*burst):
                self.tally("primes", status)
            await asyncio.sleep(0.5)

    async def slow(self) -> None:
        async def trickle(raw: bytes) -> None:
            try:
                _, writer = await asyncio.open_connection(
                    "127.0.0.1", self.port, local_addr=(ATTACKERS[2], 0)
                )
            except OSError:
                return
            try:
                for byte in raw:
                    if self.stop.is_set():
                        break
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(1.0)
                self.tally("slow", None)
            except OSError:
                self.tally("slow", None)  # the server hung up on it: what should happen
            finally:
                writer.close()

        while not self.stop.is_set():
            tasks = [trickle(post("/generate", b'{"prime": "a", "length": 5}')) for _ in range(40)]
            tasks += [trickle(b"") for _ in range(20)]  # idle sockets
            await asyncio.gather(*tasks)

    async def scan(self) -> None:
        methods = [b"GET", b"PUT", b"DELETE", b"PATCH", b"BREW", b"X" * 30, b"TRACE"]
        while not self.stop.is_set():
            method = self.rng.choice(methods) + str(self.rng.randrange(1000)).encode()
            path = "/" + "".join(self.rng.choices("abcdefgh/", k=self.rng.randrange(1, 40)))
            self.tally("scan", await request(self.port, post(path, b"{}", method), ATTACKERS[3]))
            await asyncio.sleep(0.005)

    async def score_burst(self, count: int = 64, chars: int = 250_000) -> None:
        """`count` texts of `chars` characters with top_n 5 sent at once (inside the
        client's quota), each reply read to its end and dropped; again once all are in."""
        text = "".join(self.rng.choices(self.vocabulary, k=chars))
        body = json.dumps({"text": text, "top_n": 5}).encode()

        async def one() -> None:
            try:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", self.port, local_addr=(SCORE_BURST, 0)
                )
            except OSError:
                self.tally("score_burst", None)
                return
            try:
                writer.write(post("/score", body))
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
                while await reader.read(1 << 16):
                    pass
                self.tally("score_burst", int(head.split(b" ", 2)[1]))
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                self.tally("score_burst", None)
            except asyncio.CancelledError:
                self.tally("score_burst", "unanswered at the phase's end")
                raise
            finally:
                writer.close()

        while not self.stop.is_set():
            burst = [asyncio.create_task(one()) for _ in range(count)]
            stopped = asyncio.create_task(self.stop.wait())
            everyone = asyncio.gather(*burst, return_exceptions=True)
            await asyncio.wait([stopped, everyone], return_when="FIRST_COMPLETED")
            for task in [*burst, stopped]:
                task.cancel()
            await everyone

    async def regex_flood(self, in_flight: int = 24) -> None:
        """`in_flight` requests at a time (inside the client's quota), each with a pattern
        never sent before that is slow to compile: a{3000}, a{3001}, ... (a second of
        parsing each) and (a|b)*a(a|b){20}, {21}, ... (2^20 states: past the deadline)."""
        body = b'{"prime": "a", "length": 5, "regex": "%s"}'
        sent = 0

        async def one() -> None:
            nonlocal sent
            while not self.stop.is_set():
                sent += 1
                pattern = f"a{{{3000 + sent}}}" if sent % 2 else f"(a|b)*a(a|b){{{20 + sent}}}"
                raw = post("/generate", body % pattern.encode())
                self.tally("regex_flood", await request(self.port, raw, REGEX_FLOOD, timeout=120))

        await asyncio.gather(*(one() for _ in range(in_flight)))

    async def never_read(
        self, count: int = 16, chars: int = 100_000, give_up: float = 240.0
    ) -> None:
        """`count` connections (inside the client's quota) that each send a /score of
        `chars` characters with top_n 5 (a reply of ~15 MB, far more than the kernel's
        buffers) with a 4 KB receive buffer, and never read a byte of it. Each is watched
        (its TCP state and the bytes the kernel holds for it, neither read) until the
        server drops it: the seconds from its reply's first byte to the drop, and the
        server's RSS while they are held and once all are gone, go to `figures`. Again
        once all are gone; when told to stop, the last round is still watched to its end
        (at most `give_up` seconds after it was sent)."""
        text = "".join(self.rng.choices(self.vocabulary, k=chars))
        raw = post("/score", json.dumps({"text": text, "top_n": 5}).encode())
        loop = asyncio.get_running_loop()

        async def connect() -> socket.socket | None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect
            sock.setblocking(False)
            try:
                sock.bind((NEVER_READ, 0))
                await loop.sock_connect(sock, ("127.0.0.1", self.port))
                await loop.sock_sendall(sock, raw)
            except OSError:
                sock.close()
                self.tally("never_read", None)
                return None
            return sock

        while True:
            sent = time.monotonic()
            socks = [
                sock for sock in await asyncio.gather(*(connect() for _ in range(count))) if sock
            ]
            first_byte: dict[socket.socket, float] = {}
            status: dict[socket.socket, str] = {}  # its reply's status line, peeked
            held_rss = 0.0
            while socks and time.monotonic() - sent < give_up:
                await asyncio.sleep(0.05)
                now = time.monotonic()
                for sock in list(socks):
                    if sock not in first_byte and _waiting_bytes(sock) > 0:
                        first_byte[sock] = now
                        status[sock] = _peek_status(sock)
                    state = _tcp_state(sock)
                    if state != TCP_ESTABLISHED:  # reset (or closed) by the server
                        socks.remove(sock)
                        self.figures["never_read_dropped_s"].append(now - first_byte.get(sock, now))
                        self.figures["never_read_sent_to_drop_s"].append(now - sent)
                        how = "reset" if state == TCP_CLOSE else "closed"
                        self.tally("never_read", f"{how} after {status.get(sock, 'nothing')}")
                        sock.close()
                if not held_rss and socks and all(sock in first_byte for sock in socks):
                    held_rss = _rss_mb(self.server)  # every reply started, none read
            for sock in socks:  # never dropped
                self.tally("never_read", "still connected")
                sock.close()
            if held_rss:
                self.figures["never_read_held_rss_mb"].append(held_rss)
            await asyncio.sleep(1.0)  # the server's bookkeeping of the drops
            self.figures["never_read_after_rss_mb"].append(_rss_mb(self.server))
            if self.stop.is_set():
                return

    async def hangups(self) -> None:
        body = json.dumps({"prime": "a", "length": 2000}).encode()
        while not self.stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", self.port, local_addr=(ATTACKERS[4], 0)
                )
                writer.write(post("/generate/stream", body))
                await writer.drain()
                await reader.read(2000)
                writer.transport.abort()  # gone mid-stream, without a goodbye
                self.tally("hangups", None)
            except OSError:
                pass
            await asyncio.sleep(0.05)

    async def flood(self) -> None:
        """As many long streams as one client may open, held open and read slowly."""
        body = json.dumps({"prime": "a", "length": 2000}).encode()

        async def one() -> None:
            while not self.stop.is_set():
                try:
                    reader, writer = await asyncio.open_connection(
                        "127.0.0.1", self.port, local_addr=(ATTACKERS[5], 0)
                    )
                except OSError:
                    await asyncio.sleep(0.1)
                    continue
                try:
                    writer.write(post("/generate/stream", body))
                    await writer.drain()
                    head = await reader.readuntil(b"\r\n\r\n")
                    self.tally("flood", int(head.split(b" ", 2)[1]))
                    while not self.stop.is_set() and await reader.read(256):
                        await asyncio.sleep(0.05)
                except (OSError, asyncio.IncompleteReadError):
                    pass
                finally:
                    writer.close()
                await asyncio.sleep(0.1)

        await asyncio.gather(*(one() for _ in range(300)))

    def tasks(self) -> list:
        return [
            self.fields(),
            self.primes(),
            self.slow(),
            self.scan(),
            self.hangups(),
            self.score_burst(),
            self.regex_flood(),
            self.never_read(),
            self.flood(),
        ]


def _tcp_state(sock: socket.socket) -> int:
    """The socket's TCP state (1: established), read without reading its data."""
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
    except OSError:
        return 0


def _peek_status(sock: socket.socket) -> str:
    """The status code of the reply waiting in the socket, left there (MSG_PEEK)."""
    try:
        head = sock.recv(12, socket.MSG_PEEK)
    except OSError:
        return "?"
    parts = head.split(b" ")
    return parts[1].decode(errors="replace") if len(parts) > 1 else "?"


def _waiting_bytes(sock: socket.socket) -> int:
    """Bytes the kernel holds for the socket, unread (FIONREAD)."""
    try:
        return struct.unpack("i", fcntl.ioctl(sock, termios.FIONREAD, b"\0" * 4))[0]
    except OSError:
        return 0


def _rss_mb(pid: int) -> float:
    """VmRSS of a process now, in MB (0 when unknown)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def attack(
    port: int,
    vocabulary: list[str],
    stop: Any,
    statuses: Any,
    only: set[str] | None = None,
    server: int = 0,
) -> None:
    """The hostile clients until `stop` (a multiprocessing Event) is set, in a process of
    their own as they would be on machines of their own; their tally, and the figures of
    the attacks that measure the server (`server`: its process id), go to `statuses` as
    (tally, figures). `only`: the names of the attacks to run (Hostile's methods; None:
    all)."""
    hostile = Hostile(port, vocabulary, server)

    async def run() -> None:
        chosen = []
        for task in hostile.tasks():
            if only is None or task.__name__ in only:
                chosen.append(task)
            else:
                task.close()  # made, never started
        tasks = [asyncio.create_task(task) for task in chosen]
        while not stop.is_set():
            await asyncio.sleep(0.05)
        hostile.stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(run())
    statuses.put((dict(hostile.statuses), dict(hostile.figures)))
