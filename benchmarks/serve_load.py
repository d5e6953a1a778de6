"""Load benchmark: N concurrent streaming clients against our server and the naive baseline.

    python benchmarks/serve_load.py                       # both servers, N = 1, 8, 64, 256
    python benchmarks/serve_load.py --servers ours --clients 1,64

Each server runs as its own process on a free port with the same checkpoint (access logs
off); each client POSTs /generate/stream asking for `--length` chars (top_k 5) over a plain
socket and reads the SSE events.
Per N it runs `--repeats` times and prints the median run's aggregate chars/s, p50/p99
time to first char, p99 gap between events, errors and the server's peak RSS; the last
lines are the ratios ours/baseline at N = 1 and N = 64.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = ROOT / "checkpoints" / "shakespeare.safetensors"


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


def server_command(kind: str, checkpoint: Path, port: int) -> list[str]:
    if kind == "baseline":
        script = str(ROOT / "benchmarks" / "naive_server.py")
        return [sys.executable, script, "--checkpoint", str(checkpoint), "--port", str(port)]
    return [sys.executable, "-m", "app", "--checkpoint", str(checkpoint), "--port", str(port)]


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the process's peak resident set so far (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def one_stream(port: int, length: int, seed: int) -> StreamResult:
    """POST /generate/stream over a plain asyncio socket and read its SSE events.

    The client side is deliberately lean (no HTTP library): it shares the machine's cores
    with the server, and what it costs per event is taken from the server being measured.
    """
    body = json.dumps({"prime": "The ", "length": length, "top_k": 5, "seed": seed}).encode()
    started = time.perf_counter()
    first, last, gaps, chars = None, None, [], 0
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
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
    error = None if chars == length else f"got {chars} of {length} chars"
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


async def run_load(port: int, clients: int, length: int, pid: int) -> LoadResult:
    started = time.perf_counter()
    results = await asyncio.gather(*(one_stream(port, length, seed) for seed in range(clients)))
    seconds = time.perf_counter() - started
    return LoadResult(clients, seconds, list(results), peak_rss_mb(pid))


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


def bench_server(
    kind: str, checkpoint: Path, clients: list[int], length: int, repeats: int
) -> dict[int, LoadResult]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LOG_LEVEL": "warning", "ACCESS_LOG": "false"}
    process = subprocess.Popen(server_command(kind, checkpoint, port), env=env, cwd=ROOT)
    try:
        wait_healthy(port, process)
        for warm_up in (1, 8):  # first requests, first batch: not what is measured
            asyncio.run(run_load(port, warm_up, 20, process.pid))
        results = {}
        for n in clients:
            # The run with the median chars/s of `repeats` (a shared machine is noisy).
            runs = [asyncio.run(run_load(port, n, length, process.pid)) for _ in range(repeats)]
            result = sorted(runs, key=lambda run: run.chars_per_second)[len(runs) // 2]
            results[n] = result
            print_row(kind, result)
        return results
    finally:
        process.terminate()
        process.wait(30)


def print_row(kind: str, result: LoadResult) -> None:
    firsts = [r.first_char for r in result.results if r.first_char is not None]
    gaps = [g for r in result.results for g in r.gaps]
    print(
        f"| {kind:8} | {result.clients:4d} | {result.chars_per_second:10.0f} | "
        f"{percentile(firsts, 50) * 1e3:9.1f} | {percentile(firsts, 99) * 1e3:9.1f} | "
        f"{percentile(gaps, 99) * 1e3:9.1f} | {result.errors:6d} | {result.peak_rss_mb:8.0f} |",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--clients", default="1,8,64,256", help="comma-separated N values")
    parser.add_argument("--baseline-clients", default=None, help="N values for the baseline")
    parser.add_argument("--length", type=int, default=500)
    parser.add_argument("--servers", default="baseline,ours")
    parser.add_argument("--repeats", type=int, default=3, help="runs per N; the median is shown")
    args = parser.parse_args()
    clients = [int(n) for n in args.clients.split(",")]
    baseline_clients = [int(n) for n in (args.baseline_clients or args.clients).split(",")]

    print(
        f"{os.cpu_count()} CPUs, {args.length} chars per client, median of {args.repeats} runs, "
        f"checkpoint {args.checkpoint}"
    )
    print("| server | N | chars/s | p50 TTFC ms | p99 TTFC ms | p99 gap ms | errors | RSS MB |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|")
    results = {}
    for kind in args.servers.split(","):
        n_values = baseline_clients if kind == "baseline" else clients
        results[kind] = bench_server(kind, args.checkpoint, n_values, args.length, args.repeats)
    for n in (1, 64):
        if all(n in results.get(kind, {}) for kind in ("ours", "baseline")):
            ratio = results["ours"][n].chars_per_second / results["baseline"][n].chars_per_second
            print(f"ratio ours/baseline at N={n}: {ratio:.1f}x aggregate chars/s")


if __name__ == "__main__":
    main()
