"""The load generator's side of the serving benchmarks: streaming clients that time what
they receive, and what the server process used meanwhile.

`run_load(port, N, ...)` runs N clients at once, each from its own loopback address
(127.0.1.1, ...: as many users would; the service limits requests per client), each
POSTing /generate/stream and reading its SSE events over a plain socket. The client side
is deliberately lean (no HTTP library): it shares the machine's cores with the server, and
what it costs per event is taken from the server being measured. benchmarks/serve_load.py,
hostile_load.py and score_speed.py build on it.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx

REQUESTS = {
    "plain": {"top_k": 5},
    "options": {"top_k": 5, "stop": ["\n\n\n\n"], "repetition_penalty": 1.2, "logprobs": 5},
    # Sentences of the README's pattern, repeated, so a stream runs its whole length as the
    # plain ones do (one sentence would end after ~40 characters: mostly set-up time).
    "regex": {"top_k": 5, "regex": "([A-Z][a-z]+( [a-z]+){3,8}\\. )+"},
}


@dataclass
class StreamResult:
    chars: int
    first_char: float | None  # seconds from request to first chars event
    gaps: list[float]  # seconds between consecutive chars events
    error: str | None = None


@dataclass
class LoadResult:
    clients: int
    seconds: float
    results: list[StreamResult]
    peak_rss_mb: float
    cpu: dict[str, float]  # CPU seconds a wall second (1.0: one core busy), by where spent

    @property
    def chars_per_second(self) -> float:
        return sum(r.chars for r in self.results if not r.error) / self.seconds

    @property
    def errors(self) -> int:
        return sum(1 for r in self.results if r.error)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def client_address(n: int) -> str:
    """The n-th client's own loopback address: 127.0.1.1, 127.0.1.2, ..."""
    return f"127.0.{1 + n // 250}.{1 + n % 250}"


def cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds so far of the server's main thread (its event loop) and of its other
    threads together (decoding, the kernel's helpers), and of this client process."""
    tick = os.sysconf("SC_CLK_TCK")
    used = {"loop": 0.0, "threads": 0.0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        seconds = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        used["loop" if task.name == str(pid) else "threads"] += seconds
    return {**used, "client": time.process_time()}


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the process's peak resident set so far (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def one_stream(
    port: int, length: int, seed: int, extra: dict, model: str | None, source: str
) -> StreamResult:
    """POST /generate/stream over a plain asyncio socket and read its SSE events.

    The client side is deliberately lean (no HTTP library): it shares the machine's cores
    with the server, and what it costs per event is taken from the server being measured.
    """
    fields = {"prime": "The ", "length": length, "seed": seed, **extra}
    if model is not None:
        fields["model"] = model
    body = json.dumps(fields).encode()
    started = time.perf_counter()
    first, last, gaps, chars, ended = None, None, [], 0, False
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    except OSError as error:
        return StreamResult(0, None, [], type(error).__name__)
    try:
        writer.write(
            b"POST /generate/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nAccept: text/event-stream\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
        )
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status != 200:
            return StreamResult(0, None, [], f"HTTP {status}")
        pending = b""
        async for data in _body_chunks(reader, b"chunked" in head.lower()):
            pending += data.replace(b"\r\n", b"\n")
            *events, pending = pending.split(b"\n\n")
            for event in events:
                if event.startswith(b"event: done\n"):
                    ended = json.loads(event.split(b"\ndata:", 1)[1]).get("finish_reason")
                if not event.startswith(b"event: chars\n"):
                    continue
                now = time.perf_counter()
                if first is None:
                    first = now - started
                else:
                    gaps.append(now - last)
                last = now
                chars += len(json.loads(event.split(b"\ndata:", 1)[1]))
    except (OSError, asyncio.IncompleteReadError, ValueError) as error:
        return StreamResult(chars, first, gaps, type(error).__name__)
    finally:
        writer.close()
    complete = chars == length or ended in ("stop", "regex")
    error = None if complete else f"got {chars} of {length} chars"
    return StreamResult(chars, first, gaps, error)


async def _body_chunks(reader: asyncio.StreamReader, chunked: bool) -> AsyncIterator[bytes]:
    """The response body as it arrives (HTTP/1.1 chunked transfer, or until close)."""
    while True:
        if not chunked:
            data = await reader.read(65536)
            if not data:
                return
            yield data
            continue
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            return
        yield (await reader.readexactly(size + 2))[:-2]


async def run_load(
    port: int, clients: int, length: int, pid: int, extra: dict, models: list[str] | None
) -> LoadResult:
    before = cpu_seconds(pid)
    started = time.perf_counter()
    results = await asyncio.gather(
        *(
            one_stream(
                port,
                length,
                seed,
                extra,
                models[seed % len(models)] if models else None,
                client_address(seed),
            )
            for seed in range(clients)
        )
    )
    seconds = time.perf_counter() - started
    after = cpu_seconds(pid)
    cpu = {name: (after[name] - before[name]) / seconds for name in after}
    return LoadResult(clients, seconds, list(results), peak_rss_mb(pid), cpu)


def wait_healthy(port: int, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server did not become healthy")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        if len(values) > 1
        else values[0]
    )
